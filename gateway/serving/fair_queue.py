"""The requests of one model waiting for a slot on a capped endpoint, served fairly by account.

Accounts take turns (round robin over the accounts that have a request waiting) and each
account's requests go in arrival order, so an account with hundreds of requests queued delays
another account's single request by at most one slot per account ahead of it, not by its
whole backlog. Pushing, serving and removing cost O(1) plus O(accounts waiting) at most;
nothing here suspends, so the event loop makes each step atomic.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Waiter:
    """One waiting request: what it needs to choose an endpoint, and where to hear of it."""

    model: object  # gateway.selectors.CatalogModel, the snapshot the request was admitted on
    tried: set
    account: Hashable
    future: asyncio.Future


class FairQueue:
    def __init__(self):
        self._by_account: dict[Hashable, deque[Waiter]] = {}
        # Accounts with a request waiting, the next to be served first.
        self._turns: deque[Hashable] = deque()
        self.size = 0

    def push(self, waiter: Waiter) -> None:
        waiting = self._by_account.get(waiter.account)
        if waiting is None:
            waiting = self._by_account[waiter.account] = deque()
            self._turns.append(waiter.account)
        waiting.append(waiter)
        self.size += 1

    def remove(self, waiter: Waiter) -> None:
        """A waiter that gave up (its client left, its wait ran out)."""
        waiting = self._by_account.get(waiter.account)
        if waiting is None or waiter not in waiting:
            return
        waiting.remove(waiter)
        self.size -= 1
        if not waiting:
            del self._by_account[waiter.account]
            self._turns.remove(waiter.account)

    def serve(self, pick: Callable[[Waiter], object], *, full: object) -> bool:
        """Offer a slot to the account whose turn it is: ``pick(waiter)`` (for the account's
        oldest request) takes one and returns it, or returns ``full`` when every endpoint
        that waiter may use is full. The first waiter served gets ``pick``'s answer and its
        account goes to the back of the turns. Returns whether one was served.

        A waiter that finds everything full with nothing tried speaks for all: the others
        would too. One that already tried endpoints (a failover) may find full only those it
        has not tried; the next account is asked then, and it keeps its turn."""
        for account in list(self._turns):
            waiting = self._by_account[account]
            # A request cancelled a moment ago (its task has not run its clean-up yet).
            while waiting and waiting[0].future.done():
                waiting.popleft()
                self.size -= 1
            if not waiting:
                del self._by_account[account]
                self._turns.remove(account)
                continue
            waiter = waiting[0]
            endpoint = pick(waiter)
            if endpoint is full:
                if not waiter.tried:
                    return False
                continue
            waiting.popleft()
            self.size -= 1
            self._turns.remove(account)
            if waiting:
                self._turns.append(account)
            else:
                del self._by_account[account]
            waiter.future.set_result(endpoint)
            return True
        return False
