"""A Celery broker that needs no server: kombu's filesystem transport, made race-free.

Upstream kombu writes a message file in place, so a worker polling the folder can pick
up a half-written file and crash on it. Here a message is written to a hidden temp file
and renamed into the queue folder (rename is atomic on POSIX), and a reader claims a
message by renaming it into its own folder, so two workers never take the same file.

The exchange tables (which queues an exchange routes to) had the same flaw: a process binding
a queue creates and truncates the table file before it holds its lock, so another process
could read an empty file and crash (JSONDecodeError). Tables are now replaced whole by rename
as well, with writers serialised on a lock file of their own; readers need no lock.
"""

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic

from kombu.transport import filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for folder in (self.data_folder_in, self.data_folder_out, self.control_folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
        self._claim_folder = Path(self.data_folder_in) / ".claimed"
        self._claim_folder.mkdir(exist_ok=True)
        self._restore_orphaned_claims()

    def _restore_orphaned_claims(self):
        """Put back messages claimed by a worker that died before reading them."""
        for claimed in self._claim_folder.iterdir():
            pid, _, name = claimed.name.partition("-")
            if pid.isdigit() and not _process_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(claimed, os.path.join(self.data_folder_in, name))

    # --- exchange tables -------------------------------------------------------------------
    def get_table(self, exchange):
        try:
            raw = self._exchange_file(exchange).read_bytes()
        except FileNotFoundError:
            return []
        return [filesystem.exchange_queue_t(*q) for q in loads(bytes_to_str(raw))]

    @contextlib.contextmanager
    def _table_for_update(self, exchange):
        """Yield the exchange's bindings as a list; what the caller leaves in it is written
        back whole (temp file + rename), one writer at a time."""
        folder = Path(self.control_folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{exchange}.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            queues = self.get_table(exchange)
            before = list(queues)
            yield queues
            if queues != before:
                file = self._exchange_file(exchange)
                tmp = file.with_name(f".tmp-{uuid.uuid4()}-{file.name}")
                tmp.write_bytes(str_to_bytes(dumps(queues)))
                os.replace(tmp, file)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_for_update(exchange) as queues:
            if entry not in queues:
                queues.insert(0, entry)

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        # Skip kombu's filesystem version (it rewrites the table in place) for the generic one.
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_for_update(exchange) as queues:
            if entry in queues:
                queues.remove(entry)

    # --- messages ----------------------------------------------------------------------------
    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000):015d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".tmp-{name}")
        try:
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add a message to {queue!r}") from exc

    def _get(self, queue):
        suffix = f".{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or not name.endswith(suffix):
                continue
            claimed = self._claim_folder / f"{os.getpid()}-{name}"
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another worker claimed it first
            try:
                payload = claimed.read_bytes()
            finally:
                claimed.unlink(missing_ok=True)
            return loads(bytes_to_str(payload))
        raise Empty()

    def _size(self, queue):
        suffix = f".{queue}.msg"
        return sum(
            1
            for name in os.listdir(self.data_folder_in)
            if not name.startswith(".") and name.endswith(suffix)
        )

    def _purge(self, queue):
        count = 0
        suffix = f".{queue}.msg"
        for name in os.listdir(self.data_folder_in):
            if name.startswith(".") or not name.endswith(suffix):
                continue
            try:
                os.remove(os.path.join(self.data_folder_in, name))
                count += 1
            except FileNotFoundError:
                pass
        return count


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = "filesystem"
    driver_name = "portalfs"
