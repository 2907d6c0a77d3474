"""One simulated vLLM replica: continuous batching, chunked prefill, KV blocks and preemption.

Scheduling per step follows vLLM V1: every decoding sequence gets one token; the rest of the
``max_num_batched_tokens`` budget goes to prompt chunks, first for sequences already prefilling, then
for newly admitted ones (FCFS, up to ``max_num_seqs``). KV is allocated as tokens computed (plus half a
block of fragmentation per sequence); when the decode slots of the next step do not fit, the most
recently admitted sequence is preempted and later recomputed (prompt + generated tokens prefilled
again). Step durations come from a :class:`~tidal.sim.stepmodel.StepTimeModel`, clamped so that no
step is ever faster than the model's physical floor.

Cost: decoding sequences are not touched per step. The replica keeps a decode-step counter; a
sequence stores the counter value at which it started decoding, so its length is implicit, the KV
total is an aggregate, and finishes come off a heap keyed by the step at which they end. Stretches of
pure decode (nothing to prefill or admit) run as one macro step of ``k`` identical-shape steps, ending
at a finish, at KV exhaustion or at ``t_limit``; its duration is the trapezoid of the first and last
step's time, which is exact when step time is linear in KV tokens.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from tidal.sim.stepmodel import EngineLimits, StepTimeModel, check_limits

WAITING, PREFILLING, DECODING, DONE = 0, 1, 2, 3


class Request:
    """A request's lifecycle in the simulator (times are virtual seconds; -1 = not yet)."""

    __slots__ = (
        "admitted",
        "arrival",
        "computed",
        "ctx0",
        "d0",
        "epoch",
        "finish",
        "first_token",
        "gen0",
        "generated",
        "id",
        "need",
        "output",
        "preemptions",
        "prompt",
        "replica",
        "state",
    )

    def __init__(self, rid: int, arrival: float, prompt: int, output: int) -> None:
        self.id = rid
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.replica = -1
        self.computed = 0
        self.need = prompt
        self.generated = 0
        self.first_token = -1.0
        self.admitted = -1.0
        self.finish = -1.0
        self.d0 = 0
        self.ctx0 = 0
        self.gen0 = 0
        self.epoch = 0
        self.preemptions = 0
        self.state = WAITING

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        return (self.finish - self.first_token) / (self.output - 1) if self.output > 1 else 0.0


class ReplicaEngine:
    """The engine of one replica. ``step(now, t_limit)`` runs the next (macro) step, applies its
    effects and returns its end time; finished requests are appended to ``self.finished``."""

    def __init__(
        self,
        rid: int,
        model: StepTimeModel,
        limits: EngineLimits,
        record_steps: bool = False,
    ) -> None:
        check_limits(limits)
        self.rid = rid
        self.model = model
        self.limits = limits
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        self.prefilling: list[Request] = []
        self.n_dec = 0
        self.sum_ctx = 0  # Σ (ctx0 - d0) over decoding sequences
        self.kv_pref = 0
        self.dstep = 0
        self.heap: list[tuple[int, int, int]] = []
        self.finished: list[Request] = []
        self.first_tokens: list[Request] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.preemptions_total = 0
        self.busy_seconds = 0.0
        self.steps: list[tuple[int, int, int, int, float]] | None = [] if record_steps else None
        self._half_block = limits.block_size // 2

    # --- gauges -------------------------------------------------------------------------------
    def kv_tokens(self) -> int:
        return self.sum_ctx + self.n_dec * self.dstep + self.kv_pref

    def kv_allocated(self) -> int:
        return self.kv_tokens() + self._half_block * len(self.running)

    def kv_usage(self) -> float:
        return min(1.0, self.kv_allocated() / self.limits.kv_cache_tokens)

    def outstanding(self) -> int:
        return len(self.running) + len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # --- mutation -----------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        req.replica = self.rid
        self.waiting.append(req)

    def _preempt_last(self) -> None:
        _, req = self.running.popitem()
        if req.state == DECODING:
            req.generated = req.gen0 + (self.dstep - req.d0)
            self.n_dec -= 1
            self.sum_ctx -= req.ctx0 - req.d0
            req.epoch += 1
        else:
            self.prefilling.remove(req)
            self.kv_pref -= req.computed
        req.need = req.prompt + req.generated
        req.computed = 0
        req.state = WAITING
        req.preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(req)

    def _start_decoding(self, req: Request, end: float) -> None:
        """Prefill completed at the end of a step: one token is sampled."""
        req.generated += 1
        self.generation_tokens_total += 1
        if req.first_token < 0:
            req.first_token = end
            self.first_tokens.append(req)
        if req.generated >= req.output:
            del self.running[req.id]
            req.state = DONE
            req.finish = end
            self.finished.append(req)
            return
        req.state = DECODING
        req.d0 = self.dstep
        req.ctx0 = req.computed
        req.gen0 = req.generated
        self.sum_ctx += req.ctx0 - req.d0
        self.n_dec += 1
        heapq.heappush(self.heap, (self.dstep + req.output - req.generated, req.id, req.epoch))

    def _pop_finishes(self, end: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= self.dstep:
            _, rid, epoch = heapq.heappop(heap)
            req = self.running.get(rid)
            if req is None or req.epoch != epoch or req.state != DECODING:
                continue
            del self.running[rid]
            self.n_dec -= 1
            self.sum_ctx -= req.ctx0 - req.d0
            req.generated = req.output
            req.state = DONE
            req.finish = end
            self.finished.append(req)

    def _clean_heap_top(self) -> None:
        heap = self.heap
        while heap:
            _, rid, epoch = heap[0]
            req = self.running.get(rid)
            if req is not None and req.epoch == epoch and req.state == DECODING:
                return
            heapq.heappop(heap)

    def _time(self, prefill: int, dec: int, kv: int) -> float:
        m = self.model
        return max(m.step_seconds(prefill, dec, kv), m.physical_floor_seconds(prefill, dec, kv))

    def step(self, now: float, t_limit: float) -> float:
        """Run the next step (or macro step) starting at ``now``; returns its end time."""
        lim = self.limits
        cap = lim.kv_cache_tokens
        # Decode slots for this step must fit: preempt the newest sequences until they do.
        while self.n_dec > 0 and self.kv_allocated() + self.n_dec > cap:
            self._preempt_last()
        free = cap - self.kv_allocated() - self.n_dec
        can_admit = bool(self.waiting) and len(self.running) < lim.max_num_seqs and free > lim.block_size
        if self.n_dec > 0 and not self.prefilling and not can_admit:
            return self._macro_decode(now, t_limit, cap)

        budget = lim.max_num_batched_tokens - self.n_dec
        prefill_tokens = 0
        done: list[Request] = []
        for req in self.prefilling:
            if budget <= 0 or free <= 0:
                break
            c = min(req.need - req.computed, budget, free)
            req.computed += c
            self.kv_pref += c
            budget -= c
            free -= c
            prefill_tokens += c
            if req.computed >= req.need:
                done.append(req)
        while self.waiting and budget > 0 and free > lim.block_size and len(self.running) < lim.max_num_seqs:
            req = self.waiting.popleft()
            req.state = PREFILLING
            if req.admitted < 0:
                req.admitted = now
            self.running[req.id] = req
            self.prefilling.append(req)
            free -= self._half_block
            c = min(req.need, budget, free)
            req.computed = c
            self.kv_pref += c
            budget -= c
            free -= c
            prefill_tokens += c
            if c >= req.need:
                done.append(req)
        if prefill_tokens == 0 and self.n_dec == 0 and len(self.prefilling) > 1:
            self._preempt_last()  # partial prompts filled the KV cache: free the newest so others finish
            return self.step(now, t_limit)
        kv = self.kv_tokens()
        dt = self._time(prefill_tokens, self.n_dec, kv)
        if self.steps is not None:
            self.steps.append((prefill_tokens, self.n_dec, kv, 1, dt))
        end = now + dt
        self.busy_seconds += dt
        self.prompt_tokens_total += prefill_tokens
        if self.n_dec:
            self.dstep += 1
            self.generation_tokens_total += self.n_dec
            self._pop_finishes(end)
        if done:
            ids = {r.id for r in done}
            self.prefilling = [r for r in self.prefilling if r.id not in ids]
            for req in done:
                self.kv_pref -= req.computed
                self._start_decoding(req, end)
        return end

    def _macro_decode(self, now: float, t_limit: float, cap: int) -> float:
        n = self.n_dec
        self._clean_heap_top()
        k_fin = self.heap[0][0] - self.dstep if self.heap else 1
        free = cap - self.kv_allocated()
        k_kv = free // n
        kv0 = self.kv_tokens()
        s0 = self._time(0, n, kv0)
        k_time = math.ceil((t_limit - now) / s0) if t_limit > now else 1
        k = max(1, min(k_fin, k_kv, k_time))
        s1 = self._time(0, n, kv0 + (k - 1) * n) if k > 1 else s0
        dt = k * (s0 + s1) / 2
        if self.steps is not None:
            self.steps.append((0, n, kv0, k, dt))
        end = now + dt
        self.busy_seconds += dt
        self.dstep += k
        self.generation_tokens_total += n * k
        self._pop_finishes(end)
        return end
