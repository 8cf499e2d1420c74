"""A Celery broker that needs no server: kombu's filesystem transport, made race-free.

Upstream kombu writes a message file in place, so a worker polling the folder can pick
up a half-written file and crash on it. Here a message is written to a hidden temp file
and renamed into the queue folder (rename is atomic on POSIX), and a reader claims a
message by renaming it into its own folder, so two workers never take the same file.
"""

import contextlib
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic

from kombu.transport import filesystem
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
