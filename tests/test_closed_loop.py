"""The closed-loop benchmark's simulated population and tallies (prefmine/closed_loop.py), without Ray or gRPC:
users of the real Magazine 5-core data with a response model fitted to it answer slates as the model says, send
feedback only for what they clicked, and the per-arm verdict is true only when the intervals separate."""

from __future__ import annotations

import numpy as np
import pytest
from test_policy import _load_magazine

from prefmine.closed_loop import (
    ArmTally,
    Outcome,
    Population,
    PopulationConfig,
    Slate,
    percentiles,
    split_by_windows,
    verdict,
)
from prefmine.policy.response import fit_response_model


@pytest.fixture(scope="module")
def population():
    seqs, valid, _test, n_items, rated, ratings = _load_magazine()
    model = fit_response_model(seqs, valid, n_items, rated_items=rated, ratings=ratings)
    histories = {f"user-{u}": list(map(int, s)) for u, s in enumerate(seqs) if len(s)}
    return Population(model, [f"item-{i}" for i in range(n_items)], histories, PopulationConfig(k=10, pages=3))


def _run(pop, slate_for, sessions=300, seed=0):
    """Sessions of drawn users against `slate_for(user)`; (tally, feedback sent, slates served)."""
    tally, sent, served = ArmTally(), [], []

    def recommend(user, k, exclude):
        items = [i for i in slate_for(user) if i not in exclude][:k]
        served.append(items)
        return Slate(f"imp-{len(served)}", "a", items)

    def feedback(user, outcome):
        sent.append((user, outcome.impression_id, list(outcome.clicks), list(outcome.buys)))

    for n in range(sessions):
        rng = np.random.default_rng([seed, n])
        user = pop.draw(rng)
        tally.add_session(pop.session(user, recommend, feedback, rng), user)
    return tally, sent, served


def test_users_click_what_the_response_model_finds_attractive_and_say_so(population):
    pop = population
    rank = {}

    def by_attraction(user, best: bool):
        if user not in rank:
            h = np.asarray(pop.histories[user])
            cands = np.setdiff1d(np.arange(len(pop.item_ids)), h)
            order = cands[np.argsort(-pop.response.attraction(h, cands))]
            rank[user] = order
        order = rank[user] if best else rank[user][::-1]
        return [pop.item_ids[i] for i in order]

    good, sent, served = _run(pop, lambda u: by_attraction(u, True))
    after_good = {u: list(h) for u, h in pop.histories.items()}
    bad, _, _ = _run(pop, lambda u: by_attraction(u, False))
    g, b = good.summary(), bad.summary()
    assert g["sessions"] == b["sessions"] == 300
    assert verdict({"good": g, "bad": b}, "good", "bad")["learning_beats_control"], (g, b)
    assert g["purchased"] <= g["clicked"] and g["purchased"] > 0
    assert 300 <= g["impressions"] <= 900  # at most `pages` slates a session
    # feedback is sent for clicked impressions only, naming items of that impression's slate
    assert len(sent) == g["clicked"]
    for _user, imp, clicks, buys in sent:
        slate = served[int(imp.split("-")[1]) - 1]
        assert clicks and set(clicks) <= set(slate) and set(buys) <= set(clicks)
    # a user's clicks stay in their history for their later sessions, as in the service's
    clicked: dict[str, list[str]] = {}
    for user, _imp, clicks, _buys in sent:
        clicked.setdefault(user, []).extend(clicks)
    for user, items in clicked.items():
        assert [pop.item_ids[i] for i in after_good[user][-len(items):]] == items


def test_a_click_joins_the_history_and_unknown_items_are_skipped(population):
    pop = population
    user = pop.users[0]
    h0 = list(pop.histories[user])
    history, shown = list(h0), []
    outcome = Outcome("i", "a")
    rng = np.random.default_rng(3)
    items = ["no-such-item", *pop.item_ids[:20]]
    while not outcome.clicks:  # examine until something is clicked (attraction > 0 everywhere)
        history, shown, outcome = list(h0), [], Outcome("i", "a")
        pop.examine(history, shown, items, rng, outcome)
    assert [pop.item_ids[i] for i in history[len(h0):]] == outcome.clicks
    assert "no-such-item" not in outcome.clicks and pop.index.get("no-such-item") is None
    assert all(pop.item_ids[i] in items for i in shown)
    # a slate of items the catalogue does not know: nothing to click, nothing to leave over, every page asked
    calls = []
    out = pop.session(user, lambda u, k, ex: calls.append((k, ex)) or Slate("x", "a", [f"nope-{len(calls)}"]),
                      lambda u, o: pytest.fail("feedback without a click"), np.random.default_rng(0))
    assert [o.clicks for o in out] == [[], [], []]
    # each page asks without what the session has shown before (the simulator never shows an item twice)
    assert calls == [(10, []), (10, ["nope-1"]), (10, ["nope-1", "nope-2"])]


def test_verdict_needs_separate_user_clustered_intervals_and_latency_splits_by_window():
    def arm(clicked, n=1000, users=500):
        """`users` users with a session of n / users impressions each; the first `clicked` impressions clicked."""
        t, per = ArmTally(), n // users
        for u in range(users):
            t.add_session([Outcome(f"i{u * per + j}", "a", ["x"] if u * per + j < clicked else [])
                           for j in range(per)], f"u{u}")
        return t.summary()

    assert verdict({"l": arm(300), "c": arm(100)}, "l", "c")["learning_beats_control"]
    close = verdict({"l": arm(110), "c": arm(100)}, "l", "c")
    assert not close["learning_beats_control"] and not close["learning_below_control"]
    assert verdict({"l": arm(100), "c": arm(300)}, "l", "c")["learning_below_control"]
    s = arm(100)
    assert s["users"] == 500 and s["ctr_ci95"][0] < s["ctr"] == 0.1 < s["ctr_ci95"][1]
    assert s["ctr_ci95_users"][0] < 0.1 < s["ctr_ci95_users"][1]
    # 20 users of 50 impressions each, every user clicking all or nothing: per impression 0.6 against 0.4 looks
    # decided, but it is 12 users against 8 of 20 each, which is not
    few = verdict({"l": arm(600, users=20), "c": arm(400, users=20)}, "l", "c")
    assert few["per_impression_intervals_separate"] and not few["learning_beats_control"]

    samples = [(float(t), float(t * 10)) for t in range(10)]
    inside, outside = split_by_windows(samples, [(2.0, 4.0), (8.5, 9.0)])
    assert inside == [20.0, 30.0, 40.0, 90.0] and len(outside) == 6
    p = percentiles(outside)
    assert p["n"] == 6 and p["max"] == 80.0 and p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
    assert percentiles([])["p50"] is None
    with pytest.raises(ValueError):
        PopulationConfig(pages=0)


def test_population_browses_like_the_gates_simulator_and_tallies_its_return():
    sim = {"slate_size": 5, "max_steps": 12, "leave_prob": 0.1, "leave_prob_skip": 0.3, "fatigue": 0.5,
           "fatigue_window": 4, "state_step": 0.3}
    cfg = PopulationConfig.like_simulator(sim)
    assert (cfg.k, cfg.pages, cfg.leave_prob, cfg.leave_prob_skip, cfg.fatigue, cfg.fatigue_window) == (
        5, 3, 0.1, 0.3, 0.5, 4)  # 3 pages of 5 cover the 12 steps
    assert (PopulationConfig.like_simulator({"slate_size": 0, "max_steps": 10}).k,
            PopulationConfig.like_simulator(sim, k=10, pages=1).pages) == (10, 1)
    t = ArmTally()
    t.add_session([Outcome("a", "x", ["i1", "i2"], ["i1"]), Outcome("b", "x")])
    t.add_session([Outcome("c", "x")])
    s = t.summary()
    assert (s["impressions"], s["clicked"], s["return_per_session"]) == (3, 1, 1.5)  # (2 clicks + 1 buy + 0) / 2
    assert s["return_per_session_ci95"][0] < 1.5 < s["return_per_session_ci95"][1]
