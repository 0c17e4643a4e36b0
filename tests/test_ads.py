"""Ads: the GSP auction's prices, budgets that are never exceeded, frequency caps, and calibration on real data.

Property tests (hypothesis) drive the real auction, ledger and cap objects; the calibration test fits the
response model on the real Beauty sequences and checks the calibrator on users it never saw.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefmine.ads.auction import gsp, position_prices
from prefmine.ads.budget import BudgetLedger
from prefmine.ads.calibration import Calibrator, ece, fit_calibrator, log_loss, reliability_png
from prefmine.ads.config import AdsConfig
from prefmine.ads.frequency import FrequencyCap
from prefmine.ads.placement import place, settle
from tests.conftest import data_root

# Bids and click probabilities as a shop has them: zero, or at least a millionth of a currency unit and one in a
# billion. Below that, bid x probability falls into floating point's subnormal range, where a product keeps a few
# bits only and "the least bid that keeps the slot" cannot be told from a bid a rounding step lower (hypothesis
# found bid 1.0 x pCTR 2e-311 against 2e-313 x 1.0).
money = st.one_of(st.just(0.0), st.floats(1e-6, 50.0, allow_nan=False, allow_infinity=False))
prob = st.one_of(st.just(0.0), st.floats(1e-9, 1.0, allow_nan=False, allow_infinity=False))


@st.composite
def auctions(draw):
    n = draw(st.integers(1, 12))
    bids = draw(st.lists(money, min_size=n, max_size=n))
    pctr = draw(st.lists(prob, min_size=n, max_size=n))
    k = draw(st.integers(1, 5))
    reserves = sorted(draw(st.lists(st.floats(0.0, 10.0), min_size=k, max_size=k)), reverse=True)
    return np.array(bids), np.array(pctr), np.array(reserves)


def _slot_of(ad: int, bids, pctr, reserves) -> int | None:
    r = gsp(bids, pctr, reserves)
    hit = np.flatnonzero(r.winners == ad)
    return int(hit[0]) if len(hit) else None


@settings(max_examples=400, deadline=None)
@given(auctions())
def test_gsp_price_is_between_reserve_and_bid_and_is_the_second_price(a):
    bids, pctr, reserves = a
    r = gsp(bids, pctr, reserves)
    score = bids * pctr
    assert len(r.winners) <= len(reserves) and len(set(r.winners.tolist())) == len(r.winners)
    for s, (w, price) in enumerate(zip(r.winners, r.prices)):
        assert bids[w] > 0 and pctr[w] > 0
        assert reserves[s] - 1e-12 <= price <= bids[w] + 1e-12
        # the second-price formula: the best-scored ad below it that clears this slot's reserve sets the price
        below = [c for c in range(len(bids)) if c not in r.winners[: s + 1] and bids[c] >= reserves[s]
                 and pctr[c] > 0 and (score[c], -c) < (score[w], -w)]
        rival = max(below, key=lambda c: (score[c], -c), default=None)
        expect = reserves[s] if rival is None else max(reserves[s], score[rival] / pctr[w])
        assert price == pytest.approx(min(bids[w], expect), rel=1e-9, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(auctions())
def test_gsp_price_is_the_least_bid_that_keeps_the_slot(a):
    """Rerun the auction with the winner's bid at its price (keeps the slot) and just below it (loses it)."""
    bids, pctr, reserves = a
    r = gsp(bids, pctr, reserves)
    for s, (w, price) in enumerate(zip(r.winners, r.prices)):
        at = bids.copy()
        at[w] = price * (1 + 1e-12) + 1e-15
        if at[w] <= bids[w]:
            assert _slot_of(w, at, pctr, reserves) == s
        below = bids.copy()
        below[w] = price * (1 - 1e-6)
        if price > 1e-9:
            assert _slot_of(w, below, pctr, reserves) != s


def test_gsp_one_slot_no_reserve_is_vickrey_and_rejects_bad_input():
    r = gsp([3.0, 5.0, 1.0], [0.1, 0.1, 0.1], [0.0])
    assert r.winners.tolist() == [1] and r.prices.tolist() == pytest.approx([3.0])
    r = gsp([2.0, 1.0], [0.1, 0.4], [0.5, 0.5])  # ranked by bid x pCTR: 0.4 beats 0.2
    assert r.winners.tolist() == [1, 0] and r.prices.tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="'bids'\\[1\\]"):
        gsp([1.0, float("nan")], [0.1, 0.1], [0.0])
    with pytest.raises(ValueError, match="reserves"):
        gsp([1.0], [0.1], [0.1, 0.2])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.sampled_from([0.0, 0.1, 0.2, 0.4])),
                min_size=1, max_size=10))
def test_position_prices_follow_rank_order_with_ties_in_request_order(rows):
    """What Rank serves: its order is np.lexsort((request position, -bid x p)); every position is a slot."""
    bids, p = np.array([b for b, _ in rows]), np.array([q for _, q in rows])
    ev = bids * p
    order = [j for j in np.lexsort((np.arange(len(rows)), -ev)) if ev[j] > 0]
    price = position_prices(bids, p)
    for j, nxt in zip(order, order[1:] + [None]):
        assert price[j] == pytest.approx(0.0 if nxt is None else min(bids[j], ev[nxt] / p[j]))
    assert all(price[j] == 0 for j in range(len(rows)) if ev[j] == 0)


def _run_day(ledger, freq, budgets, bids, rng, n_requests, reserves, lock=None, charged=None, users=50):
    camps = list(budgets)
    for t in range(n_requests):
        user = f"u{rng.integers(users)}"
        pick = rng.choice(len(camps), size=min(8, len(camps)), replace=False)
        got = place(user, [camps[j] for j in pick], bids[pick], rng.uniform(0.01, 0.6, len(pick)), reserves,
                    ledger, freq, elapsed=t / n_requests, now=float(t), rng=rng)
        for p in got:
            amount = settle(ledger, p, clicked=bool(rng.random() < p.pctr))
            if charged is not None:
                with lock:
                    charged[p.campaign] = charged.get(p.campaign, 0.0) + amount


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31), st.integers(2, 30))
def test_spend_never_exceeds_any_budget_over_thousands_of_auctions(seed, n_camps):
    rng = np.random.default_rng(seed)
    budgets = {f"c{i}": float(rng.uniform(0.0, 5.0)) for i in range(n_camps)}
    bids = rng.uniform(0.0, 3.0, n_camps)
    ledger = BudgetLedger(budgets, tolerance=0.05)
    charged: dict[str, float] = {}
    _run_day(ledger, FrequencyCap(1000, 1e9), budgets, bids, rng, 2000, (0.05, 0.02), threading.Lock(), charged)
    for c, b in budgets.items():
        assert ledger.spent(c) <= b + 1e-9
        assert ledger.spent(c) == pytest.approx(charged.get(c, 0.0))
        assert ledger.remaining(c) == pytest.approx(b - ledger.spent(c))  # every hold was settled


def test_spend_never_exceeds_any_budget_with_concurrent_threads():
    budgets = {f"c{i}": 3.0 + i for i in range(10)}
    bids = np.linspace(0.5, 4.0, 10)
    ledger = BudgetLedger(budgets, tolerance=1.0)  # pacing off: every thread races for the same money
    lock, charged, errors = threading.Lock(), {}, []

    def day(k):
        try:
            _run_day(ledger, FrequencyCap(10**6, 1e9), budgets, bids, np.random.default_rng(k), 3000, (0.0,),
                     lock, charged)
        except BaseException as e:  # a thread's exception must fail the test, not just warn
            errors.append(e)

    threads = [threading.Thread(target=day, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for c, b in budgets.items():
        assert ledger.spent(c) <= b + 1e-9
        assert ledger.spent(c) == pytest.approx(charged.get(c, 0.0))
    assert sum(ledger.spent(c) for c in budgets) > 0.9 * sum(budgets.values())  # the budgets were contested


def test_hold_is_atomic_under_contention():
    ledger = BudgetLedger({"c": 100.0})
    wins = []

    def grab():
        wins.append(sum(ledger.hold("c", 1.0) for _ in range(500)))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == 100 and ledger.remaining("c") == 0.0


def test_pacing_spreads_spend_over_the_day():
    rng = np.random.default_rng(0)
    budgets = {f"c{i}": 2.0 for i in range(5)}
    bids = np.full(5, 1.0)
    ledger = BudgetLedger(budgets, tolerance=0.05)
    freq = FrequencyCap(10**6, 1e9)
    n = 4000
    for t in range(n):
        got = place("u", list(budgets), bids, np.full(5, 0.5), (0.1,), ledger, freq, t / n, float(t), rng)
        for p in got:
            settle(ledger, p, clicked=bool(rng.random() < 0.5))
        if t in (n // 4, n // 2):  # demand would exhaust every budget within ~40 requests without pacing
            for c, b in budgets.items():
                assert ledger.spent(c) <= b * (t / n + 0.05) + 1.0 + 1e-9
    assert all(ledger.spent(c) > 0.8 * b for c, b in budgets.items())  # and the budget is still spent by night


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.floats(1.0, 50.0), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2),
                                                                     st.floats(0.0, 5.0)), max_size=200))
def test_frequency_cap_is_honoured_in_every_window(cap, window, events):
    freq = FrequencyCap(cap, window)
    now, shown = 0.0, []
    for user, camp, dt in events:
        now += dt
        if freq.admit(f"u{user}", f"c{camp}", now):
            shown.append((user, camp, now))
    for user, camp, t in shown:  # no window ending at an impression holds more than `cap` of the pair
        assert sum(1 for u, c, s in shown if (u, c) == (user, camp) and t - window < s <= t) <= cap
    for user in range(4):  # and a pair below its cap was never refused: a refusal means the window was full
        for camp in range(3):
            n = sum(1 for u, c, s in shown if (u, c) == (user, camp) and now - window < s <= now)
            assert freq.count(f"u{user}", f"c{camp}", now) == n


def test_frequency_cap_under_concurrent_requests():
    freq = FrequencyCap(3, 1e9)
    got = []
    threads = [threading.Thread(target=lambda: got.append(sum(freq.admit("u", "c", 1.0) for _ in range(50))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 3


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="reserves"):
        AdsConfig(reserves=(0.1, 0.2))
    with pytest.raises(ValueError, match="freq_cap"):
        AdsConfig(freq_cap=0)
    with pytest.raises(ValueError, match="calibration_methods"):
        AdsConfig(calibration_methods=("magic",))
    with pytest.raises(ValueError, match="'budget'"):
        BudgetLedger({"c": -1.0})


@pytest.fixture(scope="module")
def beauty_heldout():
    """Response model fitted on the real Beauty train sequences (next = validation item); held-out rows: each
    user's real test item against 19 random unseen items, scored from history + validation item."""
    from prefmine.ads.heldout import labelled_pairs, predict_pairs, read_sequences, split_last
    from prefmine.policy.response import fit_response_model

    path = data_root() / "seqrec" / "Beauty" / "Beauty.txt"
    if not path.is_file():
        pytest.fail(f"real data not found: {path} (set PREFMINE_DATA_DIR)")
    seqs, items, _ = read_sequences(path)
    hist, valid, test = split_last(seqs)
    model = fit_response_model(hist, valid, len(items))
    full = [np.r_[h, v] for h, v in zip(hist, valid)]
    users, cands, y = labelled_pairs(full, test, len(items), 19, np.random.default_rng(0))
    return users, predict_pairs(model, full, users, cands), y


def test_calibration_lowers_ece_on_real_held_out_users(beauty_heldout, tmp_path):
    users, p, y = beauty_heldout
    fit_rows = users % 2 == 0  # calibrate on half the users, judge on the other half
    cal = fit_calibrator(p[fit_rows], y[fit_rows])
    pe, ye = p[~fit_rows], y[~fit_rows]
    before, after = ece(pe, ye), ece(cal(pe), ye)
    assert cal.method in ("platt", "isotonic")
    assert after < 0.5 * before and after < 0.02
    assert log_loss(cal(pe), ye) < log_loss(pe, ye)
    cal.save(tmp_path / "cal")
    back = Calibrator.load(tmp_path / "cal")
    assert np.array_equal(back(pe), cal(pe)) and back.method == cal.method
    reliability_png(tmp_path / "rel.png", {"raw": (pe, ye), "calibrated": (cal(pe), ye)})
    assert (tmp_path / "rel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrator_keeps_raw_probabilities_when_they_are_already_calibrated():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 20000)
    y = (rng.random(20000) < p).astype(float)
    cal = fit_calibrator(p, y)
    assert ece(cal(p), y) < 0.02
    with pytest.raises(ValueError, match="'p'"):
        fit_calibrator(np.r_[p[:10], 1.5], np.r_[y[:10], 1.0])
