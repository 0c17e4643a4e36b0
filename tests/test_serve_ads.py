"""Rank's ad auction over gRPC on the session's served app (`server_proc`, default AdsConfig: reserves 0.05, 0.03,
0.02 per slot, frequency cap 3 a day): campaigns written with WriteCampaigns (its own scope, bad rows refused by
name); a winner pays the generalised second price, at least its slot's reserve; a user over a campaign's cap
stops seeing it while another user still does; a campaign whose budget is spent stops winning; a click naming
the ad impression commits the held price once, however often it is retried. The candidates are cold-start
popularity shares (a user unknown to the bundle), the budgets large enough that pacing never leaves a campaign
out (it does so only once spend runs ahead of the day) except where the test spends it on purpose."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from live_server import API_KEY, raw_user_ids

from prefmine.feedback import open_feedback_store
from prefmine.serving.ad_auction import utc_day
from prefmine.v1 import recommender_pb2 as pb
from prefmine.v1 import recommender_pb2_grpc as pb_grpc

KEY = [("x-api-key", API_KEY)]
RESERVES = (0.05, 0.03, 0.02)  # AdsConfig's defaults, which the session server runs with


@pytest.fixture(scope="module")
def ads_stub(server_proc):
    with grpc.insecure_channel(server_proc.addr) as channel:
        yield pb_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def popular(ads_stub) -> list[str]:
    """Six items with a popularity share > 0 (a cold start's slate)."""
    resp = ads_stub.Recommend(pb.RecommendRequest(user_id=f"ads-probe-{uuid.uuid4()}", k=6), timeout=30, metadata=KEY)
    assert len(resp.items) == 6
    return [it.item_id for it in resp.items]


def rank(stub, user, items, bids, campaigns) -> pb.RankResponse:
    return stub.Rank(pb.RankRequest(user_id=user, candidate_item_ids=items, bids=bids, campaign_ids=campaigns),
                     timeout=30, metadata=KEY)


def test_write_campaigns_scope_and_rows(server_proc, ads_stub):
    from serve.auth import add_key

    keys = server_proc.feedback_db.parent / "api_keys"  # tests/conftest.py server_proc: keys_file_for(base / ...)
    reader = add_key(keys, "ads-reader", "Rank")
    request = pb.WriteCampaignsRequest(rows=[
        pb.CampaignRow(campaign_id="adtest-scope-ok", daily_budget=10.0, freq_cap=2),
        pb.CampaignRow(campaign_id="adtest bad id", daily_budget=1.0),
        pb.CampaignRow(campaign_id="adtest-neg", daily_budget=-1.0),
        pb.CampaignRow(campaign_id="adtest-cap0", daily_budget=1.0, freq_cap=0)])
    resp = ads_stub.WriteCampaigns(request, timeout=30, metadata=KEY)
    assert resp.stored == 1
    assert [(e.index, e.campaign_id, e.reason.split()[0]) for e in resp.refused] == [
        (1, "adtest bad id", "campaign_id"), (2, "adtest-neg", "daily_budget"), (3, "adtest-cap0", "freq_cap")]
    t0 = time.monotonic()
    while True:  # the key file is re-read while serving
        try:
            ads_stub.WriteCampaigns(request, timeout=30, metadata=[("x-api-key", reader)])
            pytest.fail("a key without WriteCampaigns in its scope wrote campaigns")
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                break
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() - t0 < 10, e
            time.sleep(0.2)
    store = open_feedback_store(str(server_proc.feedback_db), create=False)
    try:
        assert set(store.ads.campaigns(["adtest-scope-ok", "adtest-neg"])) == {"adtest-scope-ok"}
    finally:
        store.close()


def test_auction_prices_caps_budgets_and_clicks(server_proc, ads_stub, popular):
    stub = ads_stub
    tag = uuid.uuid4().hex[:8]
    big, small, capped = f"adtest-big-{tag}", f"adtest-small-{tag}", f"adtest-cap-{tag}"
    stub.WriteCampaigns(pb.WriteCampaignsRequest(rows=[
        pb.CampaignRow(campaign_id=big, daily_budget=1000.0),
        pb.CampaignRow(campaign_id=small, daily_budget=RESERVES[0]),  # one win at the reserve spends it
        pb.CampaignRow(campaign_id=capped, daily_budget=1000.0, freq_cap=2)]), timeout=30, metadata=KEY)
    a, b, c, organic = popular[0], popular[1], popular[2], popular[3]
    user = f"ads-user-{tag}"

    # second price: two sponsored candidates and an organic one
    resp = rank(stub, user, [a, b, organic, "no-such-item"], [2.0, 1.5, 9.0, 1.0], [big, big, "", big])
    assert not resp.calibrated and not resp.unplaced and list(resp.unknown_item_ids) == ["no-such-item"]
    got = {it.item_id: it for it in resp.items}
    assert got[organic].price == 0.0 and got[organic].ad_slot == 0 and not got[organic].ad_impression_id
    ads = sorted((it for it in resp.items if it.campaign_id), key=lambda it: it.ad_slot)
    assert [it.ad_slot for it in ads] == [1, 2]
    first, second = ads
    score = {it.item_id: it.bid * it.click_probability for it in ads}
    assert score[first.item_id] >= score[second.item_id]
    assert first.price == pytest.approx(min(first.bid, max(RESERVES[0], score[second.item_id]
                                                           / first.click_probability)))
    assert second.price == pytest.approx(RESERVES[1])  # nobody below it: its slot's reserve
    assert all(RESERVES[it.ad_slot - 1] <= it.price <= it.bid for it in ads)
    assert len({it.ad_impression_id for it in ads}) == 2

    # a click commits the held price once: the retry (same idempotency key) and a second request naming the
    # same ad impression charge nothing more
    day = utc_day(time.time())[0]
    store = open_feedback_store(str(server_proc.feedback_db), create=False)
    try:
        held_before = store.ads.spend([big], day)[big]
        assert held_before[0] == 0.0 and held_before[1] == pytest.approx(first.price + second.price)
        click = pb.Event(user_id=user, item_id=first.item_id, type=pb.EVENT_TYPE_CLICK,
                         timestamp=int(time.time()), impression_id=first.ad_impression_id)
        for key in ("ads-click-1", "ads-click-1", "ads-click-2"):
            stub.RecordFeedback(pb.RecordFeedbackRequest(events=[click], idempotency_key=key), timeout=30,
                                metadata=KEY)
        committed, held = store.ads.spend([big], day)[big]
        assert committed == pytest.approx(first.price) and held == pytest.approx(second.price)

        # frequency cap 2 for this campaign: the third auction leaves it out for this user, not for another
        for n in range(3):
            r = rank(stub, user, [c], [1.0], [capped])
            assert [it.ad_slot for it in r.items] == ([1] if n < 2 else [])
        assert [(u.item_id, u.reason) for u in r.unplaced] == [(c, "frequency_cap")]
        assert [it.ad_slot for it in rank(stub, user + "-other", [c], [1.0], [capped]).items] == [1]

        # a budget of one reserve: the first win holds it all, then the campaign stops winning
        r = rank(stub, user + "-s1", [b], [5.0], [small])
        assert [(it.ad_slot, it.price) for it in r.items] == [(1, pytest.approx(RESERVES[0]))]
        for n in range(2):
            r = rank(stub, f"{user}-s{n + 2}", [b, a], [5.0, 1.0], [small, ""])
            assert [it.item_id for it in r.items] == [a]
            assert [(u.item_id, u.campaign_id, u.reason) for u in r.unplaced] == [(b, small, "budget")]
        committed, held = store.ads.spend([small], day)[small]
        assert committed + held <= RESERVES[0] + 1e-9
        # unknown and organic-only requests: nothing held, nothing refused
        r = rank(stub, user, [a], [1.0], ["adtest-never-written"])
        assert [(u.item_id, u.reason) for u in r.unplaced] == [(a, "unknown_campaign")] and not r.items
    finally:
        store.close()


def test_rank_refuses_misaligned_campaign_ids(ads_stub, popular):
    for campaigns, field in (([popular[0]], "campaign_ids has 1 entries"), (["ok", "bad id"], "campaign_ids[1]")):
        with pytest.raises(grpc.RpcError) as info:
            rank(ads_stub, "u", popular[:2], [], campaigns)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details()


def test_bundle_calibration_fit_and_served(server_proc, ads_stub, bundle_path, magazine5, tmp_path, popular):
    """The calibration part: fitted on held-out validation users of the bundle's data (one half fits, the other
    judges), saved as JSON + .npz (no pickle) and read back; and Rank serves the bundle's own calibration, if it
    has one, on a known user's probabilities in a request with campaigns (raw ones without campaigns)."""
    import json

    from prefmine.ads.bundle_calibration import PART, fit_bundle_calibration, load_bundle_calibrator
    from prefmine.bundle import Bundle, read_manifest
    from prefmine.data.dataset import load_dataset

    copy = tmp_path / "bundle"
    copy.mkdir()
    (copy / "ranker").symlink_to(bundle_path / "ranker")  # what the fit reads
    report = fit_bundle_calibration(load_dataset(magazine5), copy)
    assert sorted(p.name for p in (copy / PART).iterdir()) == ["calibrator.json", "calibrator.npz"]
    json.loads((copy / PART / "calibrator.json").read_text())
    assert report["judged_rows"] > 0 and report["fit_rows"] > 0
    assert report["ece_calibrated"] < report["ece_raw"] and report["log_loss_calibrated"] < report["log_loss_raw"]
    assert load_bundle_calibrator(copy).method == report["method"]

    bundle = Bundle.load(bundle_path)
    user = next(u for u in raw_user_ids(bundle) if len(bundle.history(bundle.pseudonymise(u))))
    served_cal = load_bundle_calibrator(bundle_path)
    tag = uuid.uuid4().hex[:8]
    ads_stub.WriteCampaigns(pb.WriteCampaignsRequest(rows=[pb.CampaignRow(campaign_id=f"adtest-cal-{tag}",
                                                                          daily_budget=1000.0)]),
                            timeout=30, metadata=KEY)
    raw = rank(ads_stub, user, popular[:3], [], [])
    sponsored = rank(ads_stub, user, popular[:3], [], [f"adtest-cal-{tag}", "", ""])
    assert not raw.calibrated and not raw.cold_start
    assert sponsored.calibrated == (served_cal is not None)
    raw_p = {it.item_id: it.click_probability for it in raw.items}
    shown = {it.item_id: it.click_probability for it in sponsored.items}  # the organic two, the ad if it won
    assert len(shown) >= 2
    want = {i: float(served_cal(raw_p[i])) if served_cal is not None else raw_p[i] for i in shown}
    assert shown == pytest.approx(want)
    components = read_manifest(bundle_path).get("components", {})
    assert (PART in components and "ece_calibrated" in components[PART]) == (served_cal is not None)
