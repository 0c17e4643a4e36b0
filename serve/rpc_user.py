"""GetUserProfile and RecordFeedback: what the service knows of a user (history, categories, brands, keywords, the
ranker's preference vector), and the user's events appended durably (answered only after the commit), with the
idempotency key, refused for an erased person; a click naming an ad impression charges its held price."""

from __future__ import annotations

import asyncio

from prefmine.serving.arms import arm_of
from prefmine.v1 import recommender_pb2 as pb
from serve.rpc_ads import charge_clicks
from serve.rpc_common import Erased, IngressParts, NotFound
from serve.validate import EVENT_NAMES, BadRequest


class UserRpcs(IngressParts):
    """GetUserProfile and RecordFeedback (RecommenderIngress validates and calls `_profile`, `_record_feedback`)."""

    experiment: object  # prefmine.experiments.Experiment | None

    async def _profile(self, request: pb.GetUserProfileRequest) -> pb.UserProfile:
        s = self.served
        pseudonym = s.bundle.pseudonymise(request.user_id)
        if pseudonym in self.erased:
            raise NotFound("user_id: no profile (this person was erased)")
        full = await self._history(s, request.user_id)  # the bundle's history and the events logged since
        history = full.items
        with self._feedback_lock:
            counts = self.feedback.counts_by_event(pseudonym)
        profile = pb.UserProfile(known=len(history) > 0, history_length=len(history), feedback_counts=counts,
                                 bundle_version=str(s.bundle.version))
        terms = pb.WeightedTerm
        profile.top_categories.extend(terms(name=n, weight=w) for n, w in s.catalog.top_categories(history))
        profile.top_brands.extend(terms(name=n, weight=w) for n, w in s.catalog.top_brands(history))
        profile.keywords.extend(terms(name=n, weight=w) for n, w in s.catalog.keywords(history))
        if len(history):
            pref = await self._call(self.ranker.preference, s.ref, full)
            profile.preference.CopyFrom(pb.PreferenceSummary(
                dim=pref["dim"], norm=pref["norm"], top_item_ids=[s.item_ids[int(j)] for j in pref["top"]]))
        return profile

    async def _record_feedback(self, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse:
        from prefmine.feedback import FeedbackEvent, IdempotencyConflict

        s = self.served
        events = [FeedbackEvent(user=s.bundle.pseudonymise(ev.user_id), item=ev.item_id,
                                event=EVENT_NAMES[ev.type], ts=int(ev.timestamp),
                                rating=float(ev.rating) if ev.type == pb.EVENT_TYPE_RATE else None,
                                impression_id=ev.impression_id or None)  # validated: [A-Za-z0-9-]{1,64}
                  for ev in request.events]
        for n, e in enumerate(events):
            if e.user in self.erased:
                raise Erased(f"events[{n}].user_id: this person was erased; no feedback is stored for them")

        def append() -> int:
            with self._feedback_lock:
                try:
                    last = self.feedback.append(events, idempotency_key=request.idempotency_key or None)
                except IdempotencyConflict as e:
                    raise BadRequest(str(e)) from e
                charge_clicks(self.feedback, events)  # after the append: a retry finds the hold charged already
                return last

        # shielded: once the write has started, a client that goes away does not cancel it half-way (the
        # transaction commits or rolls back as a whole either way; the answer is then simply not delivered)
        last = await asyncio.shield(asyncio.to_thread(append))
        self.metrics.feedback_stored(events)
        if self.experiment is not None:  # events answering an impression, by their user's arm
            self.metrics.arm_feedback(self.experiment.name, [(arm_of(self.experiment, e.user).name, e.event)
                                                             for e in events if e.impression_id])
        return pb.RecordFeedbackResponse(stored=len(events), last_id=last)
