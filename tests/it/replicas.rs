//! Replicas: their heartbeats on the shared database, on either backend (a process is alive while
//! it beats, is taken for gone once its heartbeat is older than `GONE_AFTER`, says when it drains,
//! and is gone at once when it leaves); and calls on the multi-replica rig (`support::replicas`:
//! three server processes on one Postgres behind the shipped HAProxy configuration, round robin per
//! request), where every API request, carrier callback, TwiML fetch and media stream may land on
//! any replica:
//! - twenty calls at once on Twilio, and twenty on Vonage, each answered, greeted, heard and
//!   answered end to end over its media stream, whichever replicas its requests reach;
//! - `calls/end` through the proxy on a replica that does not hold the call's stream;
//! - every call's webhooks exactly once each and in order, throughout;
//! - the proxy routes around a replica killed with `kill -9` and one stopped with SIGTERM, and
//!   sends to each again once it is back;
//! - `kill -9` of the replica running a call mid-answer: the carrier asks again (Twilio's
//!   `<Redirect>`, Vonage's `disconnected` event and transfer), another replica takes the
//!   conversation over, and the caller hears the bot again within 3 s; killed and never resumed,
//!   the call ends `bot_disconnected`;
//! - SIGTERM: not ready at once, the call talks through the drain, is moved at the deadline (at
//!   once with `DRAIN_SECS=0`) and talks on elsewhere; alone, the bot says goodbye and hangs up;
//! - a warm transfer whose steering webhook and bot leg land on a second replica and whose
//!   conference and third-party callbacks land on the third, as on one replica; two calls on two
//!   replicas racing for a one-number steering pool (and, below the rig, many calls through two
//!   stores racing for it: one lease at a time).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::replicas::{Replicas, GONE_AFTER};
use vocode_server::store::{now, replicas, PoolSettings, Store};

use vocode_server::conversation::engine::RESUME_LINE;
use vocode_server::session::moving::GOODBYE;

use crate::support::fake_deepgram::results;
use crate::support::fake_tts::TtsBehaviour;
use crate::support::line::{twilio_stream, vonage_stream, Carrier, Line};
use crate::support::replicas::Routed;
use crate::support::{eventually, link_twilio_number, Backend, Received, Rig, S3Server, TestDb};

async fn store(backend: Backend) -> Option<(TestDb, Store)> {
    let db = TestDb::create(backend).await?;
    let store = Store::connect(&db.url, &PoolSettings::default()).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

async fn alive_ids(r: &Replicas) -> Vec<String> {
    r.alive().await.unwrap().into_iter().map(|row| row.id).collect()
}

async fn heartbeats(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let a = Replicas::new(store.clone(), "a".into());
    let b = Replicas::new(store.clone(), "b".into());
    a.beat().await.unwrap();
    b.beat().await.unwrap();
    assert_eq!(alive_ids(&a).await, ["a", "b"]);
    assert!(a.is_alive("b").await.unwrap());

    // b stops beating: once its last heartbeat is older than GONE_AFTER it is gone.
    let old = now() - chrono::Duration::from_std(GONE_AFTER).unwrap() - chrono::Duration::seconds(1);
    let mut tx = store.begin().await.unwrap();
    replicas::beat(tx.conn(), "b", old, old, false).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(alive_ids(&a).await, ["a"]);
    assert!(!a.is_alive("b").await.unwrap());

    // a drains, and says so at its next heartbeat; then it leaves.
    a.start_draining();
    a.beat().await.unwrap();
    assert!(a.alive().await.unwrap()[0].draining);
    a.leave().await.unwrap();
    assert!(alive_ids(&b).await.is_empty());
}

#[tokio::test]
async fn heartbeats_on_sqlite() {
    heartbeats(Backend::Sqlite).await;
}

#[tokio::test]
async fn heartbeats_on_postgres() {
    heartbeats(Backend::Postgres).await;
}

/// Many calls at once, through two stores (two processes' pools) on one database, ask for a
/// number of a one-number steering pool: exactly one gets it, every other is told the pool is
/// used up; once it is given back, exactly one other gets it. A lease whose holder died frees
/// the number when it expires; a two-number pool goes to two calls, one number each.
async fn steering_leases(backend: Backend) {
    use vocode_server::store::steering::{self, Lease};
    use vocode_server::store::DbConn;

    async fn lease(store: &Store, call: uuid::Uuid, pool: &[String], until: chrono::Duration) -> Lease {
        let mut tx = store.begin().await.unwrap();
        let at = now();
        let leased = steering::lease(tx.conn(), call, pool, at, at + until).await.unwrap();
        tx.commit().await.unwrap();
        leased
    }
    async fn release(store: &Store, call: uuid::Uuid) -> bool {
        let mut tx = store.begin().await.unwrap();
        let released = steering::release(tx.conn(), call).await.unwrap();
        tx.commit().await.unwrap();
        released
    }
    async fn holder(store: &Store, number: &str) -> Option<uuid::Uuid> {
        let mut handle = store.read().await.unwrap();
        let conn: DbConn<'_> = handle.conn();
        steering::holder(conn, number, now()).await.unwrap()
    }

    let Some((db, first)) = store(backend).await else { return };
    let second = Store::connect(&db.url, &PoolSettings::default()).await.unwrap();
    let stores = [first.clone(), second.clone()];
    let pool = vec!["14155550150".to_owned()];
    let hour = chrono::Duration::hours(1);
    let calls: Vec<uuid::Uuid> = (0..24).map(|_| uuid::Uuid::new_v4()).collect();
    let mut winners = Vec::new();
    for round in 0..3 {
        let contenders: Vec<uuid::Uuid> = calls.iter().copied().filter(|c| !winners.contains(c)).collect();
        let attempts = contenders.iter().enumerate().map(|(i, call)| {
            let (store, pool) = (stores[i % 2].clone(), pool.clone());
            let call = *call;
            async move { (call, lease(&store, call, &pool, hour).await) }
        });
        let results = join_all(attempts).await;
        let won: Vec<uuid::Uuid> =
            results.iter().filter(|(_, l)| *l == Lease::Leased(pool[0].clone())).map(|(c, _)| *c).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one call leases the number: {results:?}");
        let refused = results.iter().filter(|(_, l)| *l == Lease::Exhausted).count();
        assert_eq!(refused, contenders.len() - 1, "round {round}: every other call is told the pool is used up");
        let winner = won[0];
        for store in &stores {
            assert_eq!(holder(store, &pool[0]).await, Some(winner), "both processes see the one holder");
        }
        assert_eq!(lease(&second, winner, &pool, hour).await, Lease::AlreadyHeld);
        assert!(release(&stores[round % 2], winner).await, "the number goes back to the pool");
        assert!(!release(&first, winner).await, "once");
        assert_eq!(holder(&first, &pool[0]).await, None);
        winners.push(winner);
    }

    // A holder that died: its lease expires, and the number is another call's.
    let (dead, next) = (calls[20], calls[21]);
    assert_eq!(lease(&first, dead, &pool, chrono::Duration::seconds(-1)).await, Lease::Leased(pool[0].clone()));
    assert_eq!(holder(&second, &pool[0]).await, None, "an expired lease holds nothing");
    assert_eq!(lease(&second, next, &pool, hour).await, Lease::Leased(pool[0].clone()));
    assert_eq!(lease(&first, calls[22], &pool, hour).await, Lease::Exhausted);
    // A pool of two: two calls, a number each.
    let two = vec!["14155550150".to_owned(), "14155550151".to_owned()];
    assert_eq!(lease(&first, calls[22], &two, hour).await, Lease::Leased(two[1].clone()));
    assert_eq!(lease(&second, calls[23], &two, hour).await, Lease::Exhausted);

    // The transfer's news, written through one process and read through the other: another leg's
    // news is refused; once the bot leaves a transfer the third party answered, its number is free
    // and the transfer is kept (the third party's leaving ends the call).
    let call = calls[22];
    let mut tx = first.begin().await.unwrap();
    steering::third_party_dialled(tx.conn(), call, "CA3").await.unwrap();
    assert!(!steering::third_party_news(tx.conn(), call, "CAother", "answered").await.unwrap(), "another leg");
    assert!(steering::third_party_news(tx.conn(), call, "CA3", "answered").await.unwrap());
    steering::bot_left(tx.conn(), call).await.unwrap();
    tx.commit().await.unwrap();
    let mut handle = second.read().await.unwrap();
    let warm = steering::get(handle.conn(), call).await.unwrap().expect("kept after the handover");
    drop(handle);
    assert_eq!((warm.third_party.as_deref(), warm.third_party_answered, warm.bot_left), (Some("CA3"), true, true));
    assert_eq!(warm.number, None);
    assert_eq!(holder(&second, &two[1]).await, None, "its number is free again");
    assert_eq!(lease(&second, calls[23], &two, hour).await, Lease::Leased(two[1].clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_steering_number_is_leased_to_one_call_at_a_time_on_sqlite() {
    steering_leases(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_steering_number_is_leased_to_one_call_at_a_time_on_postgres() {
    steering_leases(Backend::Postgres).await;
}

// ---------------------------------------------------------------- the multi-replica rig

const OUR_NUMBER: &str = "+14155550100";
const GREETING: &str = "Hello from the restaurant.";
/// What the fake model answers when no test scripted it.
const MODEL_ANSWER: &str = "Hello from the fake.";
const CALLS: usize = 20;

/// Three replicas behind the proxy, with our Twilio number linked and a Vonage number bought
/// through it: the rig and the Vonage number.
async fn rig() -> Option<(Rig, String)> {
    let rig = Rig::start(3, &[]).await?;
    rig.twilio.own(OUR_NUMBER);
    let (sid, token) = (&rig.twilio.state.account_sid, &rig.twilio.state.auth_token);
    link_twilio_number(rig.base(), &rig.key, sid, token, OUR_NUMBER).await;
    let bought = rig.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    assert_eq!(bought.status, StatusCode::OK, "{}", bought.body);
    let vonage_number = bought.body["number"].as_str().unwrap().to_owned();
    Some((rig, vonage_number))
}

fn agent(rig: &Rig) -> Value {
    json!({
        "prompt": {"content": "You book tables."},
        "initial_message": GREETING,
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
        "webhook": {"url": rig.receiver.url, "subscriptions":
            ["event_phone_call_connected", "event_message", "event_transcript", "event_phone_call_ended"]},
    })
}

/// Places a call through the proxy on `line`: the call as the API returned it.
async fn place(rig: &Rig, line: Line, from: &str, to: String) -> Value {
    let from = if line == Line::Twilio { OUR_NUMBER } else { from };
    let created =
        rig.post("/v1/calls/create", json!({"from_number": from, "to_number": to, "agent": agent(rig)})).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    created.body
}

/// The call's transcript once it contains `line`, read through the proxy.
async fn transcript_with(rig: &Rig, id: &str, line: &str) -> String {
    eventually(Duration::from_secs(20), || async {
        let call = rig.get(&format!("/v1/calls?id={id}")).await;
        call.body["transcript"].as_str().filter(|t| t.contains(line)).map(str::to_owned)
    })
    .await
}

/// The person's first words, in 20 ms of the line's audio that no other call sends (the bytes
/// `marker`), so that the call's Deepgram connection is found by what it heard.
fn voice(line: Line, marker: u8) -> Vec<u8> {
    vec![marker; line.bytes(Duration::from_millis(20))]
}

/// The person says `words`: their audio goes up the stream, and Deepgram (the connection that
/// heard that audio, on whichever replica) hears the words.
async fn say(rig: &Rig, line: Line, carrier: &Carrier, marker: u8, words: &str) {
    let frame = voice(line, marker);
    carrier.speak(&frame);
    let connection = eventually(Duration::from_secs(10), || async {
        rig.deepgram.connections().iter().position(|c| c.audio.windows(frame.len()).any(|w| w == frame))
    })
    .await;
    rig.deepgram.send_on(connection, results(words, true, true)).await;
}

/// The carrier ends the call: it closes the stream, and (once the conversation's transcript has
/// gone out, so that each call's events have one order) says the call completed.
async fn carrier_hangs_up(rig: &Rig, line: Line, carrier: &Carrier, call: &Value) {
    if line == Line::Twilio {
        carrier.stop();
    }
    carrier.close();
    let id = call["id"].as_str().unwrap();
    eventually(Duration::from_secs(20), || async {
        rig.receiver.got().iter().any(|r| r.call_id() == id && r.kind() == "event_transcript").then_some(())
    })
    .await;
    completed(rig, line, call).await;
}

/// The carrier's callback that the call is over.
async fn completed(rig: &Rig, line: Line, call: &Value) {
    let telephony_id = call["telephony_id"].as_str().unwrap();
    let status = match line {
        Line::Twilio => rig.twilio.status(telephony_id, "completed", &[("CallDuration", "9")]).await,
        Line::Vonage => {
            let secret = rig.vonage.state.signature_secret.clone();
            rig.vonage.event(telephony_id, json!({"status": "completed", "duration": "9"}), Some(&secret)).await
        }
    };
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Each call's webhooks, as the receiver got them, once every call has its last one: exactly the
/// `expected` kinds in that order, each event once (a webhook-id of its own, received once).
async fn webhooks_exactly_once_in_order(
    rig: &Rig,
    ids: &[String],
    expected: &[&str],
) -> BTreeMap<String, Vec<Received>> {
    webhooks_in_order(rig, ids, expected, false).await
}

/// As [`webhooks_exactly_once_in_order`], across a replica killed with `kill -9`: a delivery the
/// killed replica had under way (sent, its outcome not yet written) is sent again by another, with
/// the same webhook-id and the same body, which is how a receiver tells it is the same event
/// (Standard Webhooks); each event is still received in order and no event is new twice.
async fn webhooks_once_each_across_a_crash(
    rig: &Rig,
    ids: &[String],
    expected: &[&str],
) -> BTreeMap<String, Vec<Received>> {
    webhooks_in_order(rig, ids, expected, true).await
}

async fn webhooks_in_order(
    rig: &Rig,
    ids: &[String],
    expected: &[&str],
    across_a_crash: bool,
) -> BTreeMap<String, Vec<Received>> {
    let last = *expected.last().unwrap();
    eventually(Duration::from_secs(30), || async {
        let got = rig.receiver.got();
        ids.iter().all(|id| got.iter().any(|r| r.call_id() == *id && r.kind() == last)).then_some(())
    })
    .await;
    let got = rig.receiver.got();
    let mut by_call = BTreeMap::new();
    for id in ids {
        let mut mine: Vec<Received> = got.iter().filter(|r| r.call_id() == *id).cloned().collect();
        if across_a_crash {
            let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            mine.retain(|r| match seen.get(&r.headers["webhook-id"]) {
                Some(body) => {
                    assert_eq!(body, &r.body, "call {id}: a webhook sent again is the same event");
                    false
                }
                None => {
                    seen.insert(r.headers["webhook-id"].clone(), r.body.clone());
                    true
                }
            });
        }
        let kinds: Vec<String> = mine.iter().map(Received::kind).collect();
        assert_eq!(kinds, expected, "call {id}: its events, once each, in order");
        let webhook_ids: BTreeSet<&String> = mine.iter().map(|r| &r.headers["webhook-id"]).collect();
        assert_eq!(webhook_ids.len(), expected.len(), "call {id}: one webhook-id per event, none sent twice");
        by_call.insert(id.clone(), mine);
    }
    by_call
}

/// Twenty calls at once on `line`, each through the proxy from its creation to its end: answered,
/// greeted, heard, answered in the voice's audio, hung up. Whichever replicas a call's requests and
/// its stream reach, it talks end to end, its transcript is whole, and its webhooks arrive exactly
/// once each and in order; the calls' requests and streams are spread over every replica.
async fn calls_span_replicas_and_talk_end_to_end(line: Line) {
    let Some((rig, vonage_number)) = rig().await else { return };
    let started = Instant::now();
    let one_call = |i: usize| {
        let (rig, vonage_number) = (&rig, &vonage_number);
        async move {
            let call = place(rig, line, vonage_number, format!("165055570{i:02}")).await;
            let id = call["id"].as_str().unwrap().to_owned();
            let carrier = line.pick_up(&rig.twilio, &rig.vonage, &call).await;
            let holder = rig.served_by(&carrier.handshake).expect("the proxy says who took the stream");
            transcript_with(rig, &id, &format!("BOT: {GREETING}")).await;
            let words = format!("A table for {}.", i + 2);
            say(rig, line, &carrier, 10 + i as u8, &words).await;
            let text = transcript_with(rig, &id, &format!("BOT: {MODEL_ANSWER}")).await;
            assert_eq!(text, format!("BOT: {GREETING}\nHUMAN: {words}\nBOT: {MODEL_ANSWER}\n"), "call {i}");
            assert!(carrier.first_arrived(None).is_some(), "call {i}: the voice's audio reached the carrier");
            carrier_hangs_up(rig, line, &carrier, &call).await;
            let ended = rig.get(&format!("/v1/calls?id={id}")).await;
            assert_eq!(ended.body["status"], "ended", "{}", ended.body);
            (id, holder, words)
        }
    };
    let calls = join_all((0..CALLS).map(one_call)).await;
    let talked = started.elapsed();

    let ids: Vec<String> = calls.iter().map(|(id, _, _)| id.clone()).collect();
    let expected = [
        "event_phone_call_connected",
        "event_message",
        "event_message",
        "event_message",
        "event_transcript",
        "event_phone_call_ended",
    ];
    let webhooks = webhooks_exactly_once_in_order(&rig, &ids, &expected).await;
    for (id, _, words) in &calls {
        let messages: Vec<(Value, Value)> = webhooks[id][1..4]
            .iter()
            .map(|r| (r.event()["payload"]["sender"].clone(), r.event()["payload"]["text"].clone()))
            .collect();
        assert_eq!(
            messages,
            [(json!("bot"), json!(GREETING)), (json!("human"), json!(words)), (json!("bot"), json!(MODEL_ANSWER))]
        );
    }
    assert_eq!(rig.openai.received().len(), CALLS, "one model turn per call");
    assert_eq!(rig.tts.requests().len(), 2 * CALLS, "the greeting and the answer spoken, on every call");

    // Where the requests went: every replica took streams and carrier callbacks, and most calls'
    // requests reached more than one replica.
    let routed = eventually(Duration::from_secs(5), || async {
        let routed = rig.routed();
        (routed.iter().filter(|r| r.status == 101).count() >= CALLS).then_some(routed)
    })
    .await;
    let holders: BTreeSet<usize> = calls.iter().map(|(_, holder, _)| *holder).collect();
    let callbacks: BTreeSet<Option<usize>> =
        routed.iter().filter(|r| r.path.starts_with("/telephony/") && r.status != 101).map(|r| r.replica).collect();
    assert!(holders.len() >= 2, "streams on more than one replica: {holders:?}");
    assert_eq!(callbacks, BTreeSet::from([Some(0), Some(1), Some(2)]), "callbacks on every replica");
    let spanning = ids
        .iter()
        .filter(|id| {
            let reached: BTreeSet<Option<usize>> =
                routed.iter().filter(|r| r.path.contains(id.as_str())).map(|r| r.replica).collect();
            reached.len() > 1
        })
        .count();
    assert!(spanning >= CALLS / 2, "only {spanning} of {CALLS} calls reached more than one replica");
    assert!(routed.iter().all(|r| r.replica.is_some()), "every request found a replica");
    eprintln!(
        "{line:?}: {CALLS} calls talked end to end across 3 replicas in {talked:?}; streams held by replicas \
         {holders:?}; {spanning} calls' requests reached more than one replica; {} requests through the proxy",
        routed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_span_replicas_and_talk_end_to_end_on_twilio() {
    calls_span_replicas_and_talk_end_to_end(Line::Twilio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_span_replicas_and_talk_end_to_end_on_vonage() {
    calls_span_replicas_and_talk_end_to_end(Line::Vonage).await;
}

/// `calls/end` through the proxy, answered by a replica that does not hold the call's stream: the
/// carrier is told to hang up once, the call is over for every replica at once, and when the
/// carrier closes the stream on the replica that holds it, the conversation there ends and its
/// transcript goes out after the call's end — each event once, in order. On Twilio and Vonage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_end_on_a_replica_that_does_not_hold_the_stream() {
    let Some((rig, vonage_number)) = rig().await else { return };
    let mut ids = Vec::new();
    for (i, line) in [Line::Twilio, Line::Vonage].into_iter().enumerate() {
        let call = place(&rig, line, &vonage_number, format!("16505558{i:03}")).await;
        let id = call["id"].as_str().unwrap().to_owned();
        let carrier = line.pick_up(&rig.twilio, &rig.vonage, &call).await;
        let holder = rig.served_by(&carrier.handshake).unwrap();
        transcript_with(&rig, &id, &format!("BOT: {GREETING}")).await;

        rig.steer_past(holder).await;
        let ended = rig.post(&format!("/v1/calls/end?id={id}"), Value::Null).await;
        assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
        assert_ne!(ended.replica, Some(holder), "{line:?}: calls/end went to another replica than the stream's");
        assert_eq!(
            (ended.body["status"].as_str(), ended.body["stage_outcome"].as_str()),
            (Some("ended"), Some("bot_disconnected"))
        );
        assert!(line.asked_to_hang_up(&rig.twilio, &rig.vonage, &call), "{line:?}: the carrier was told to hang up");
        for replica in 0..3 {
            let res = rig.client.get(format!("{}/v1/calls?id={id}", rig.replica(replica))).bearer_auth(&rig.key);
            let seen: Value = res.send().await.unwrap().json().await.unwrap();
            assert_eq!(seen["status"], "ended", "replica {replica} sees the call ended");
        }

        // The carrier ends the call as it was told: the stream closes on the replica holding it,
        // then the carrier's own completed callback, which changes nothing.
        if line == Line::Twilio {
            carrier.stop();
        }
        carrier.close();
        completed(&rig, line, &call).await;
        ids.push(id);
    }
    let expected = ["event_phone_call_connected", "event_message", "event_phone_call_ended", "event_transcript"];
    webhooks_exactly_once_in_order(&rig, &ids, &expected).await;
    let hang_ups = rig.twilio.requests("POST", "/Calls/CA").len();
    assert_eq!(hang_ups, 1, "Twilio was told once");
}

/// Which replicas served a dozen API requests through the proxy, each answered 200.
async fn served_by(rig: &Rig) -> BTreeSet<usize> {
    let mut served = BTreeSet::new();
    for _ in 0..12 {
        let answer = rig.get("/v1/calls/list").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        served.insert(answer.replica.expect("a replica"));
    }
    served
}

/// The rig's proxy as production's: a replica killed with `kill -9` costs no request (refused
/// connections are retried on another replica) and is out of the rotation; one stopped with SIGTERM
/// exits cleanly and gets nothing more; each takes requests again once restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_routes_around_stopped_replicas_and_back() {
    let Some(mut rig) = Rig::start(3, &[("SHUTDOWN_GRACE_SECS", "2")]).await else { return };
    rig.kill9(2);
    assert_eq!(served_by(&rig).await, BTreeSet::from([0, 1]), "no request lost, none sent to the dead one");
    rig.sigterm(1);
    assert!(rig.wait_exit(1, Duration::from_secs(30)).await.success(), "a clean exit");
    assert!(rig.logs(1).contains("shutting down"), "its log says why it stopped: {}", rig.logs(1));
    assert_eq!(served_by(&rig).await, BTreeSet::from([0]));
    rig.restart(1).await;
    rig.restart(2).await;
    assert_eq!(served_by(&rig).await, BTreeSet::from([0, 1, 2]));
}

/// A process that must be alone on its database (the sandbox's) counts another only once it
/// beats again: a row that looks alive but whose process was just killed is waited out until it
/// is stale; a process that beats is named.
async fn being_alone(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let me = Replicas::new(store.clone(), "me".into());
    me.beat().await.unwrap();
    assert!(me.require_alone("a test").await.unwrap().is_empty(), "nobody else");
    // Killed a moment before its heartbeat would have gone stale.
    let almost = now() - chrono::Duration::from_std(GONE_AFTER).unwrap() + chrono::Duration::milliseconds(800);
    let mut tx = store.begin().await.unwrap();
    replicas::beat(tx.conn(), "killed", almost, almost, false).await.unwrap();
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();
    assert!(me.require_alone("a test").await.unwrap().is_empty(), "the killed one is not counted");
    assert!(started.elapsed() >= std::time::Duration::from_millis(500), "its row was waited out");
    // One that beats is.
    let other = Replicas::new(store.clone(), "other".into());
    other.beat().await.unwrap();
    let beating = tokio::spawn(async move {
        for _ in 0..20 {
            other.beat().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    assert_eq!(me.require_alone("a test").await.unwrap(), ["other"]);
    beating.abort();
    // It counts among the processes that serve (what shared limits are divided by).
    assert_eq!(me.refresh().await.unwrap(), 2);
    assert_eq!(me.serving(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn being_alone_on_sqlite() {
    being_alone(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn being_alone_on_postgres() {
    being_alone(Backend::Postgres).await;
}

// ---------------------------------------------------------------- crashes and drains on the rig

/// The fake voice's answer in the crash scenarios: long enough to be cut mid-answer, and made of
/// one byte, so that the carrier can tell how much of it played.
const LONG_ANSWER: (Duration, u8) = (Duration::from_secs(20), 0x5a);
/// The target: after `kill -9` of the process running a call, the caller hears the bot
/// again within this.
const HEARD_AGAIN_WITHIN: Duration = Duration::from_secs(3);

/// The rig with `env`, our Twilio number linked and a Vonage number bought: the rig and the
/// Vonage number.
async fn rig_with(n: usize, env: &[(&str, &str)]) -> Option<(Rig, String)> {
    let rig = Rig::start(n, env).await?;
    rig.twilio.own(OUR_NUMBER);
    let (sid, token) = (&rig.twilio.state.account_sid, &rig.twilio.state.auth_token);
    link_twilio_number(rig.base(), &rig.key, sid, token, OUR_NUMBER).await;
    let bought = rig.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    assert_eq!(bought.status, StatusCode::OK, "{}", bought.body);
    let vonage_number = bought.body["number"].as_str().unwrap().to_owned();
    Some((rig, vonage_number))
}

/// A call placed and picked up through the proxy, greeted: the call, its id, the carrier's
/// stream, and the replica holding the stream.
async fn greeted_call(rig: &Rig, line: Line, vonage_number: &str, to: &str) -> (Value, String, Carrier, usize) {
    let call = place(rig, line, vonage_number, to.to_owned()).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let carrier = line.pick_up(&rig.twilio, &rig.vonage, &call).await;
    let holder = rig.served_by(&carrier.handshake).expect("the proxy says who took the stream");
    transcript_with(rig, &id, &format!("BOT: {GREETING}")).await;
    (call, id, carrier, holder)
}

/// The transcript's lines, and each call's `event_message`s as (speaker, text): the same, in the
/// same order, each once; and the final `event_transcript` is the whole transcript.
fn transcript_and_webhooks_agree(transcript: &str, webhooks: &[Received]) {
    let lines: Vec<(String, String)> = transcript
        .lines()
        .map(|l| {
            let (speaker, text) = l.split_once(": ").expect("a transcript line");
            (speaker.to_lowercase(), text.to_owned())
        })
        .collect();
    let messages: Vec<(String, String)> = webhooks
        .iter()
        .filter(|r| r.kind() == "event_message")
        .map(|r| {
            let payload = &r.event()["payload"];
            (payload["sender"].as_str().unwrap().to_owned(), payload["text"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(messages, lines, "each line of the transcript went out once as event_message, in order");
    let sent = webhooks.iter().find(|r| r.kind() == "event_transcript").expect("event_transcript");
    assert_eq!(sent.event()["payload"]["transcript"].as_str(), Some(transcript), "event_transcript is whole");
}

/// The kinds of webhooks a call that talked `messages` lines and was hung up by the carrier
/// sends: connected, each message, the transcript, ended.
fn talked_and_hung_up(messages: usize) -> Vec<&'static str> {
    let mut kinds = vec!["event_phone_call_connected"];
    kinds.extend(std::iter::repeat_n("event_message", messages));
    kinds.extend(["event_transcript", "event_phone_call_ended"]);
    kinds
}

/// `kill -9` of the replica running a call while the bot is mid-answer. The carrier does what it
/// does when a stream dies without a hang-up (Twilio runs the `<Redirect>` after `<Connect>`;
/// Vonage reports the websocket `disconnected` and follows the transfer the server asks for), and
/// the new stream lands on a live replica, which takes the conversation over from what was kept:
/// the caller hears the bot again within 3 s of the kill, the bot says it lost the caller and
/// answers what was unanswered, the conversation goes on, and the call's transcript, each
/// `event_message` and the final `event_transcript` are whole, each once, in order.
async fn killed_mid_answer_the_call_is_resumed(line: Line) {
    let Some((mut rig, vonage_number)) = rig_with(3, &[]).await else { return };
    rig.tts.plan([TtsBehaviour::Audio, TtsBehaviour::Lasting(LONG_ANSWER.0, LONG_ANSWER.1)]);
    let (call, id, carrier, holder) = greeted_call(&rig, line, &vonage_number, "16505559001").await;
    say(&rig, line, &carrier, 21, "A table for two.").await;
    // The bot is mid-answer: half a second of it has played.
    eventually(Duration::from_secs(10), || async { (carrier.played_ms_of(LONG_ANSWER.1) >= 500).then_some(()) }).await;

    let killed = Instant::now();
    rig.kill9(holder);
    eventually(Duration::from_secs(5), || async { carrier.closed_at() }).await;
    let resumed = line.reconnect(&rig.twilio, &rig.vonage, &call, &carrier).await;
    let heard = eventually(Duration::from_secs(10), || async { resumed.first_arrived(None) }).await;
    let silence = heard - killed;
    let taker = rig.served_by(&resumed.handshake).expect("the proxy says who took the new stream");
    assert_ne!(taker, holder, "the new stream is on a live replica");
    assert!(silence <= HEARD_AGAIN_WITHIN, "{line:?}: the caller heard the bot again {silence:?} after the kill");
    // The bot says it lost the caller, then answers what the caller said before the crash.
    transcript_with(&rig, &id, &format!("HUMAN: A table for two.\nBOT: {RESUME_LINE}\nBOT: {MODEL_ANSWER}\n")).await;

    // The conversation goes on: the caller is heard and answered on the new stream.
    say(&rig, line, &resumed, 22, "Make it four.").await;
    let text = transcript_with(&rig, &id, &format!("HUMAN: Make it four.\nBOT: {MODEL_ANSWER}\n")).await;
    carrier_hangs_up(&rig, line, &resumed, &call).await;
    let ended = rig.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(
        (ended.body["status"].as_str(), ended.body["stage_outcome"].as_str()),
        (Some("ended"), Some("human_disconnected"))
    );

    let text = rig.get(&format!("/v1/calls?id={id}")).await.body["transcript"].as_str().unwrap_or(&text).to_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..3],
        [format!("BOT: {GREETING}").as_str(), "HUMAN: A table for two.", &format!("BOT: {RESUME_LINE}")],
        "{text}"
    );
    assert_eq!(lines.iter().filter(|l| **l == "HUMAN: A table for two.").count(), 1, "{text}");
    let webhooks =
        webhooks_once_each_across_a_crash(&rig, std::slice::from_ref(&id), &talked_and_hung_up(lines.len())).await;
    transcript_and_webhooks_agree(&text, &webhooks[&id]);
    assert_eq!(rig.openai.received().len(), 3, "the cut answer, asked again after the resume, and the next one");
    eprintln!(
        "{line:?}: killed mid-answer; the caller heard the bot again {silence:?} after the kill; transcript:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_mid_answer_the_call_is_resumed_on_twilio() {
    killed_mid_answer_the_call_is_resumed(Line::Twilio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_mid_answer_the_call_is_resumed_on_vonage() {
    killed_mid_answer_the_call_is_resumed(Line::Vonage).await;
}

/// The server pointed the call at a new stream (a move): the carrier follows, as it does — Twilio
/// runs the TwiML the server posted to the call (`Twiml`), ending the old stream; Vonage transfers
/// the call to the NCCO the server sent, closing the old websocket — and opens the new stream: the
/// new stream, and when the carrier was pointed at it.
async fn follow_the_move(rig: &Rig, line: Line, call: &Value, old: &Carrier) -> (Carrier, Instant) {
    let telephony_id = call["telephony_id"].as_str().unwrap();
    match line {
        Line::Twilio => {
            let twiml = eventually(Duration::from_secs(30), || async { rig.twilio.redirected_to(telephony_id) }).await;
            let pointed = Instant::now();
            assert!(twiml.contains("<Stream") && twiml.contains("<Redirect"), "{twiml}");
            old.stop();
            old.close();
            (twilio_stream(&rig.twilio, &twiml, telephony_id).await, pointed)
        }
        Line::Vonage => {
            let ncco = eventually(Duration::from_secs(30), || async {
                rig.vonage.calls().into_iter().find(|c| c.uuid == telephony_id)?.transfers.first().cloned()
            })
            .await;
            let pointed = Instant::now();
            old.close();
            (vonage_stream(&ncco).await, pointed)
        }
    }
}

/// Waits until the caller hears the bot on `stream`: the stream, maybe a later one, and when the
/// first audio arrived. A stream the server closes before any audio (one that reached the
/// stopping replica before the proxy took it out of the rotation: it refuses calls it does not
/// run) is asked for again, as the carrier does when a stream ends without a hang-up.
async fn until_heard(rig: &Rig, line: Line, call: &Value, mut stream: Carrier) -> (Carrier, Instant) {
    for _ in 0..3 {
        let (heard, closed) = eventually(Duration::from_secs(10), || async {
            let (heard, closed) = (stream.first_arrived(None), stream.closed_at());
            (heard.is_some() || closed.is_some()).then_some((heard, closed))
        })
        .await;
        if let Some(heard) = heard {
            return (stream, heard);
        }
        eprintln!("{line:?}: the new stream was closed at {closed:?} before any audio: the carrier asks again");
        stream = line.reconnect(&rig.twilio, &rig.vonage, call, &stream).await;
    }
    panic!("{line:?}: three new streams closed before the caller heard anything");
}

/// SIGTERM to the replica running a call, with `DRAIN_SECS` of `drain`: it answers `/ready` with
/// 503 and its reason at once; the call goes on talking there during the drain; at the deadline
/// the server points the carrier at the call's resume path, the carrier follows to a new stream
/// on another replica, which takes the conversation over, and the call talks on; the stopping
/// replica exits cleanly. The call's webhooks are whole, each once, in order.
async fn drained_then_moved_at_the_deadline(line: Line, drain: u64) {
    let drain_secs = drain.to_string();
    let env = [("DRAIN_SECS", drain_secs.as_str()), ("SHUTDOWN_GRACE_SECS", "2")];
    let Some((mut rig, vonage_number)) = rig_with(3, &env).await else { return };
    let (call, id, carrier, holder) = greeted_call(&rig, line, &vonage_number, "16505559101").await;

    let stopping = Instant::now();
    rig.sigterm(holder);
    let ready = format!("{}/ready", rig.replica(holder));
    let refused = eventually(Duration::from_secs(2), || async {
        let res = rig.client.get(&ready).send().await.ok()?;
        (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(res)
    })
    .await;
    let not_ready_after = stopping.elapsed();
    let reason: Value = refused.json().await.unwrap();
    assert!(reason["detail"].as_str().is_some_and(|d| d.contains("stopping")), "{reason}");

    if drain > 0 {
        // During the drain the call goes on where it is.
        say(&rig, line, &carrier, 31, "A table for two.").await;
        transcript_with(&rig, &id, &format!("HUMAN: A table for two.\nBOT: {MODEL_ANSWER}\n")).await;
        assert!(carrier.closed_at().is_none(), "the call's stream is still open on the draining replica");
        assert!(stopping.elapsed() < Duration::from_secs(drain), "the call talked during the drain");
    }
    let (moved, pointed) = follow_the_move(&rig, line, &call, &carrier).await;
    let moved_after = pointed - stopping;
    assert!(moved_after >= Duration::from_secs(drain), "moved at the deadline, not before: {moved_after:?}");
    let (moved, heard) = until_heard(&rig, line, &call, moved).await;
    let taker = rig.served_by(&moved.handshake).expect("the proxy says who took the new stream");
    assert_ne!(taker, holder, "the call moved to another replica");
    transcript_with(&rig, &id, &format!("BOT: {RESUME_LINE}")).await;

    say(&rig, line, &moved, 32, "Make it four.").await;
    transcript_with(&rig, &id, &format!("HUMAN: Make it four.\nBOT: {MODEL_ANSWER}\n")).await;
    let status = rig.wait_exit(holder, Duration::from_secs(drain + 30)).await;
    let exited_after = stopping.elapsed();
    assert!(status.success(), "the drained replica exits cleanly: {status}");
    carrier_hangs_up(&rig, line, &moved, &call).await;

    let text = rig.get(&format!("/v1/calls?id={id}")).await.body["transcript"].as_str().unwrap().to_owned();
    let lines = text.lines().count();
    let webhooks = webhooks_exactly_once_in_order(&rig, std::slice::from_ref(&id), &talked_and_hung_up(lines)).await;
    transcript_and_webhooks_agree(&text, &webhooks[&id]);
    eprintln!(
        "{line:?}, DRAIN_SECS={drain}: not ready {not_ready_after:?} after SIGTERM; moved {moved_after:?} after; \
         the caller heard the bot on the new stream {:?} after the carrier was pointed at it; exited \
         {exited_after:?} after SIGTERM with 1 live call; transcript:\n{text}",
        heard - pointed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drained_then_moved_at_the_deadline_on_twilio() {
    drained_then_moved_at_the_deadline(Line::Twilio, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drained_then_moved_at_the_deadline_on_vonage() {
    drained_then_moved_at_the_deadline(Line::Vonage, 4).await;
}

/// `DRAIN_SECS=0`: the call is moved at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_of_zero_moves_the_call_at_once() {
    drained_then_moved_at_the_deadline(Line::Twilio, 0).await;
}

/// A call that talked on one replica and was moved to another (`DRAIN_SECS=0`), with its
/// recording in a bucket (moto's S3 server): its two segments are one recording, and the proxy
/// serves the same bytes from every replica — the two that ran the call, and the one that did
/// not (the drained replica once it is back).
async fn a_moved_calls_recording_is_served_through_the_proxy_by_every_replica(line: Line) {
    let Some(s3) = S3Server::start("recordings through the rig's proxy").await else { return };
    let mut env: Vec<(&str, String)> = vec![("DRAIN_SECS", "0".into()), ("SHUTDOWN_GRACE_SECS", "2".into())];
    env.extend(s3.env("rig"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Some((mut rig, vonage_number)) = rig_with(3, &env).await else { return };
    let (call, id, carrier, holder) = greeted_call(&rig, line, &vonage_number, "16505559150").await;
    say(&rig, line, &carrier, 51, "A table for two.").await;
    transcript_with(&rig, &id, &format!("HUMAN: A table for two.\nBOT: {MODEL_ANSWER}\n")).await;

    rig.sigterm(holder);
    let (moved, _) = follow_the_move(&rig, line, &call, &carrier).await;
    let (moved, _) = until_heard(&rig, line, &call, moved).await;
    transcript_with(&rig, &id, &format!("BOT: {RESUME_LINE}")).await;
    say(&rig, line, &moved, 52, "Make it four.").await;
    transcript_with(&rig, &id, &format!("HUMAN: Make it four.\nBOT: {MODEL_ANSWER}\n")).await;
    assert!(rig.wait_exit(holder, Duration::from_secs(30)).await.success());
    carrier_hangs_up(&rig, line, &moved, &call).await;
    let keys = eventually(Duration::from_secs(20), || async {
        let keys = s3.keys("rig/").await;
        (keys.len() == 2).then_some(keys)
    })
    .await;
    assert_eq!(keys, [format!("rig/{id}.2.wav"), format!("rig/{id}.wav")], "one segment per stream");
    let segment = |key: &str| {
        let (s3, key) = (&s3, key.to_owned());
        async move { s3.object(&key).await.expect("the segment").len() }
    };
    let longest_segment = segment(&keys[0]).await.max(segment(&keys[1]).await);

    rig.restart(holder).await;
    let url = format!("{}/v1/calls/recording?id={id}", rig.base());
    let mut served: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    for _ in 0..12 {
        let res = rig.client.get(&url).bearer_auth(&rig.key).send().await.expect("the proxy answers");
        let replica = rig.served_by(res.headers()).expect("a replica");
        assert_eq!(res.status(), StatusCode::OK, "replica {replica}");
        assert_eq!(res.headers()["content-type"], "audio/wav", "replica {replica}");
        let bytes = res.bytes().await.unwrap().to_vec();
        if let Some(before) = served.get(&replica) {
            assert_eq!(before, &bytes, "replica {replica} serves the same bytes each time");
        }
        served.insert(replica, bytes);
    }
    assert_eq!(served.keys().copied().collect::<Vec<_>>(), [0, 1, 2], "every replica served it");
    let recordings: BTreeSet<&Vec<u8>> = served.values().collect();
    assert_eq!(recordings.len(), 1, "one recording, whichever replica serves it");
    let whole = recordings.first().unwrap().len();
    assert!(whole > longest_segment, "the whole call, both streams: {whole} bytes vs a segment's {longest_segment}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_calls_recording_is_served_through_the_proxy_by_every_replica_on_twilio() {
    a_moved_calls_recording_is_served_through_the_proxy_by_every_replica(Line::Twilio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_calls_recording_is_served_through_the_proxy_by_every_replica_on_vonage() {
    a_moved_calls_recording_is_served_through_the_proxy_by_every_replica(Line::Vonage).await;
}

/// The database goes away as a drained replica is about to move its call (`DRAIN_SECS=0`): the
/// call is not lost. Nobody could take it up (no replica can read it), so its replica keeps it:
/// the caller is answered meanwhile, and the stopping replica stays. Once the database answers
/// again, what was said during the outage is kept, in order, the call moves to another replica
/// and talks on there, and its webhooks are whole, each once.
async fn the_database_unreachable_at_a_move_the_replica_keeps_the_call_until_it_can_move_it(line: Line) {
    let env = [("DRAIN_SECS", "0"), ("SHUTDOWN_GRACE_SECS", "2")];
    let Some((mut rig, vonage_number)) = rig_with(3, &env).await else { return };
    let (call, id, carrier, holder) = greeted_call(&rig, line, &vonage_number, "16505559170").await;
    // The greeting has played out.
    eventually(Duration::from_secs(10), || async {
        carrier.last_arrived().is_some_and(|at| at.elapsed() > Duration::from_millis(300)).then_some(())
    })
    .await;

    rig.db.reachable(false).await;
    let cut = Instant::now();
    rig.sigterm(holder);
    say(&rig, line, &carrier, 41, "A table for two.").await;
    let said = Instant::now();
    eventually(Duration::from_secs(10), || async { carrier.last_arrived().filter(|at| *at > said) }).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed())).await;
    assert!(carrier.closed_at().is_none(), "the call's stream stays open on its replica");
    let telephony_id = call["telephony_id"].as_str().unwrap();
    let pointed = match line {
        Line::Twilio => rig.twilio.redirected_to(telephony_id).is_some(),
        Line::Vonage => rig.vonage.calls().iter().any(|c| c.uuid == telephony_id && !c.transfers.is_empty()),
    };
    assert!(!pointed, "the carrier was not pointed anywhere");
    rig.db.reachable(true).await;
    let outage = cut.elapsed();

    let (moved, _) = follow_the_move(&rig, line, &call, &carrier).await;
    let (moved, _) = until_heard(&rig, line, &call, moved).await;
    assert_ne!(rig.served_by(&moved.handshake), Some(holder), "the call moved to another replica");
    transcript_with(&rig, &id, &format!("HUMAN: A table for two.\nBOT: {MODEL_ANSWER}\nBOT: {RESUME_LINE}")).await;
    say(&rig, line, &moved, 42, "Make it four.").await;
    transcript_with(&rig, &id, &format!("HUMAN: Make it four.\nBOT: {MODEL_ANSWER}\n")).await;
    assert!(rig.wait_exit(holder, Duration::from_secs(30)).await.success(), "the drained replica exits cleanly");
    carrier_hangs_up(&rig, line, &moved, &call).await;

    let text = rig.get(&format!("/v1/calls?id={id}")).await.body["transcript"].as_str().unwrap().to_owned();
    let webhooks =
        webhooks_exactly_once_in_order(&rig, std::slice::from_ref(&id), &talked_and_hung_up(text.lines().count()))
            .await;
    transcript_and_webhooks_agree(&text, &webhooks[&id]);
    assert!(rig.logs(holder).contains("cannot be moved now"), "the replica says why it kept the call");
    eprintln!("{line:?}: an outage of {outage:?} at the move; transcript:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_unreachable_at_a_move_the_replica_keeps_the_call_until_it_can_move_it_on_twilio() {
    the_database_unreachable_at_a_move_the_replica_keeps_the_call_until_it_can_move_it(Line::Twilio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_unreachable_at_a_move_the_replica_keeps_the_call_until_it_can_move_it_on_vonage() {
    the_database_unreachable_at_a_move_the_replica_keeps_the_call_until_it_can_move_it(Line::Vonage).await;
}

/// SIGTERM to the only replica with a live call: nobody can take it, so at the deadline the bot
/// says goodbye and hangs up, the call ends `bot_disconnected` (the server ended it, not the
/// person), and its webhooks say so once the replica is back (they were kept, not lost).
async fn alone_a_draining_replica_says_goodbye_and_hangs_up(line: Line) {
    let env = [("DRAIN_SECS", "2"), ("SHUTDOWN_GRACE_SECS", "2")];
    let Some((mut rig, vonage_number)) = rig_with(1, &env).await else { return };
    let (call, id, carrier, _) = greeted_call(&rig, line, &vonage_number, "16505559201").await;
    let stopping = Instant::now();
    rig.sigterm(0);
    eventually(Duration::from_secs(15), || async {
        line.asked_to_hang_up(&rig.twilio, &rig.vonage, &call).then_some(())
    })
    .await;
    let hung_up_after = stopping.elapsed();
    assert!(carrier.last_arrived().is_some_and(|at| at > stopping), "{line:?}: the caller heard the goodbye");
    // The hang-up's answer ends the call (read from the replica itself: the proxy sends a draining
    // replica nothing new). Then the carrier ends the stream as told; its own completed callback
    // would find no replica to take it.
    eventually(Duration::from_secs(10), || async {
        let res = rig.client.get(format!("{}/v1/calls?id={id}", rig.replica(0))).bearer_auth(&rig.key).send().await;
        let seen: Value = res.ok()?.json().await.ok()?;
        (seen["status"] == "ended").then_some(())
    })
    .await;
    if line == Line::Twilio {
        carrier.stop();
    }
    carrier.close();
    let status = rig.wait_exit(0, Duration::from_secs(40)).await;
    let exited_after = stopping.elapsed();
    assert!(status.success(), "{status}");
    rig.restart(0).await;
    let ended = rig.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(
        (ended.body["status"].as_str(), ended.body["stage_outcome"].as_str()),
        (Some("ended"), Some("bot_disconnected")),
        "{}",
        ended.body
    );
    let text = ended.body["transcript"].as_str().unwrap().to_owned();
    assert_eq!(text, format!("BOT: {GREETING}\nBOT: {GOODBYE}\n"));
    // The bot's goodbye ends its conversation (the transcript goes out) as its hang-up ends the
    // call: either may be first.
    let last = ["event_phone_call_ended", "event_transcript"];
    let firsts: Vec<String> = eventually(Duration::from_secs(30), || async {
        let got: Vec<String> = rig
            .receiver
            .got()
            .iter()
            .filter(|r| r.call_id() == id && last.contains(&r.kind().as_str()))
            .map(Received::kind)
            .collect();
        (got.len() >= 2).then_some(got)
    })
    .await;
    let mut expected = vec!["event_phone_call_connected", "event_message", "event_message"];
    expected.extend(if firsts[0] == last[0] { last } else { [last[1], last[0]] });
    let webhooks = webhooks_exactly_once_in_order(&rig, std::slice::from_ref(&id), &expected).await;
    transcript_and_webhooks_agree(&text, &webhooks[&id]);
    let ended_event = webhooks[&id].iter().find(|r| r.kind() == "event_phone_call_ended").unwrap().event();
    assert_eq!(ended_event["payload"]["stage_outcome"], "bot_disconnected", "{ended_event}");
    eprintln!("{line:?} alone: hung up {hung_up_after:?} after SIGTERM (DRAIN_SECS=2); exited {exited_after:?} after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alone_a_draining_replica_says_goodbye_and_hangs_up_on_twilio() {
    alone_a_draining_replica_says_goodbye_and_hangs_up(Line::Twilio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alone_a_draining_replica_says_goodbye_and_hangs_up_on_vonage() {
    alone_a_draining_replica_says_goodbye_and_hangs_up(Line::Vonage).await;
}

/// `kill -9` of the replica running a call, and the carrier reports the call completed before
/// anything resumed it (the caller hung up on the silence): the server's failure ended the call,
/// so it ends `bot_disconnected`, never `human_disconnected`, and its transcript goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_and_never_resumed_the_call_is_not_the_callers_doing() {
    let Some((mut rig, vonage_number)) = rig_with(3, &[]).await else { return };
    let mut ids = Vec::new();
    for (i, line) in [Line::Twilio, Line::Vonage].into_iter().enumerate() {
        let (call, id, carrier, holder) = greeted_call(&rig, line, &vonage_number, &format!("1650555930{i}")).await;
        rig.kill9(holder);
        eventually(Duration::from_secs(5), || async { carrier.closed_at() }).await;
        completed(&rig, line, &call).await;
        let ended = rig.get(&format!("/v1/calls?id={id}")).await;
        assert_eq!(
            (ended.body["status"].as_str(), ended.body["stage_outcome"].as_str()),
            (Some("ended"), Some("bot_disconnected")),
            "{line:?}: {}",
            ended.body
        );
        rig.restart(holder).await;
        ids.push(id);
    }
    let expected = ["event_phone_call_connected", "event_message", "event_phone_call_ended", "event_transcript"];
    webhooks_once_each_across_a_crash(&rig, &ids, &expected).await;
}

/// SIGTERM to a replica running several calls (of six placed, the replica that took the most
/// streams), with `DRAIN_SECS=2`: every call there is moved at the deadline and talks on
/// elsewhere, the calls on other replicas are untouched, no call is lost, and every call's
/// webhooks are whole, each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_moves_every_live_call_and_loses_none() {
    let env = [("DRAIN_SECS", "2"), ("SHUTDOWN_GRACE_SECS", "2")];
    let Some((mut rig, vonage_number)) = rig_with(3, &env).await else { return };
    let line = Line::Twilio;
    let mut calls = Vec::new();
    for i in 0..6 {
        calls.push(greeted_call(&rig, line, &vonage_number, &format!("165055594{i:02}")).await);
    }
    let busiest = (0..3).max_by_key(|r| calls.iter().filter(|(_, _, _, holder)| holder == r).count()).unwrap();
    let (moving, staying): (Vec<_>, Vec<_>) = calls.into_iter().partition(|(_, _, _, holder)| *holder == busiest);
    assert!(moving.len() >= 2, "six calls on three replicas: one holds at least two");

    let stopping = Instant::now();
    rig.sigterm(busiest);
    let mut moved = Vec::new();
    for (call, id, carrier, _) in &moving {
        let (stream, pointed) = follow_the_move(&rig, line, call, carrier).await;
        let (stream, heard) = until_heard(&rig, line, call, stream).await;
        assert_ne!(rig.served_by(&stream.handshake), Some(busiest), "moved to another replica");
        transcript_with(&rig, id, &format!("BOT: {RESUME_LINE}")).await;
        moved.push((call, id, stream, heard - pointed));
    }
    let status = rig.wait_exit(busiest, Duration::from_secs(40)).await;
    let exited_after = stopping.elapsed();
    assert!(status.success(), "{status}");

    // Every call talks on, wherever it is, and is hung up by the carrier.
    for (i, (call, id, stream, _)) in moved.iter().enumerate() {
        say(&rig, line, stream, 40 + i as u8, "Still there?").await;
        transcript_with(&rig, id, &format!("HUMAN: Still there?\nBOT: {MODEL_ANSWER}\n")).await;
        carrier_hangs_up(&rig, line, stream, call).await;
    }
    for (i, (call, id, carrier, _)) in staying.iter().enumerate() {
        assert!(carrier.closed_at().is_none(), "a call on another replica is untouched");
        say(&rig, line, carrier, 50 + i as u8, "Still there?").await;
        transcript_with(&rig, id, &format!("BOT: {GREETING}\nHUMAN: Still there?\nBOT: {MODEL_ANSWER}\n")).await;
        carrier_hangs_up(&rig, line, carrier, call).await;
    }
    let moved_ids: Vec<String> = moved.iter().map(|(_, id, _, _)| (*id).clone()).collect();
    let staying_ids: Vec<String> = staying.iter().map(|(_, id, _, _)| id.clone()).collect();
    webhooks_exactly_once_in_order(&rig, &moved_ids, &talked_and_hung_up(4)).await;
    webhooks_exactly_once_in_order(&rig, &staying_ids, &talked_and_hung_up(3)).await;
    for id in moved_ids.iter().chain(&staying_ids) {
        let ended = rig.get(&format!("/v1/calls?id={id}")).await;
        assert_eq!(ended.body["stage_outcome"], "human_disconnected", "{}", ended.body);
    }
    let silences: Vec<Duration> = moved.iter().map(|(_, _, _, silence)| *silence).collect();
    eprintln!(
        "{} live calls moved off a draining replica (DRAIN_SECS=2), exited {exited_after:?} after SIGTERM; the \
         callers heard the bot {silences:?} after their carrier was pointed at the new stream; 0 calls lost",
        moved.len()
    );
}

/// The other side of the rule above: the carrier's completed callback reaches a replica that does
/// not run the call before the stream's end reaches the one that does (the person hung up; the
/// two race). The replica that got the callback waits for the owner, alive, to end the
/// conversation: the call ends `human_disconnected`, with its transcript once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hang_up_racing_its_streams_end_is_still_the_callers_doing() {
    let Some((rig, vonage_number)) = rig_with(3, &[]).await else { return };
    let line = Line::Twilio;
    let (call, id, carrier, holder) = greeted_call(&rig, line, &vonage_number, "16505559501").await;
    rig.steer_past(holder).await;
    let callback = completed(&rig, line, &call);
    let stream_ends = async {
        // The callback is on its way to another replica first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        carrier.stop();
        carrier.close();
    };
    let started = Instant::now();
    tokio::join!(callback, stream_ends);
    let answered_after = started.elapsed();
    let ended = rig.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(
        (ended.body["status"].as_str(), ended.body["stage_outcome"].as_str()),
        (Some("ended"), Some("human_disconnected")),
        "{}",
        ended.body
    );
    let expected = ["event_phone_call_connected", "event_message", "event_transcript", "event_phone_call_ended"];
    webhooks_exactly_once_in_order(&rig, std::slice::from_ref(&id), &expected).await;
    let callbacks: Vec<Routed> =
        rig.routed().into_iter().filter(|r| r.path.starts_with("/telephony/twilio/status/")).collect();
    assert_ne!(callbacks.last().and_then(|r| r.replica), Some(holder), "the completed callback went elsewhere");
    eprintln!("a completed callback racing the stream's end was answered after {answered_after:?}");
}

// ---------------------------------------------------------------- warm transfer across replicas

const STEERING: &str = "+14155550150";
const MANAGER: &str = "+16505550177";

/// Makes the proxy's next request go to `target` (round robin in the replicas' order).
async fn steer_to(rig: &Rig, target: usize) {
    rig.steer_past((target + 2) % 3).await;
}

/// The replica the proxy sent the last request for `path_part` to.
async fn routed_to(rig: &Rig, method: &str, path_part: &str) -> usize {
    eventually(Duration::from_secs(5), || async {
        rig.routed()
            .into_iter()
            .rev()
            .find(|r| r.method == method && r.path.contains(path_part))
            .and_then(|r| r.replica)
    })
    .await
}

/// The rig, with a one-number steering pool on the Twilio account connection, and the guide's
/// warm-transfer agent (both actions fired by phrases the bot says).
async fn warm_rig() -> Option<(Rig, Value)> {
    let (rig, _) = rig().await?;
    let connections = rig.get("/v1/account_connections/list").await;
    let connection = connections.body["items"][0]["id"].as_str().unwrap().to_owned();
    rig.twilio.own(STEERING);
    let path = format!("/v1/account_connections/add_to_steering_pool?id={connection}");
    let added = rig.post(&path, json!({"phone_number": STEERING})).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let phrase = |p: &str| {
        json!({"type": "action_trigger_phrase_based",
               "config": {"phrase_triggers": [{"phrase": p, "conditions": ["phrase_condition_type_contains"]}]}})
    };
    let mut actions = Vec::new();
    for action in [
        json!({"type": "action_set_hold", "config": {}, "action_trigger": phrase("Removing participant from hold")}),
        json!({"type": "action_add_to_conference", "config": {"phone_number": MANAGER},
               "action_trigger": phrase("I connect you now please hold")}),
    ] {
        let created = rig.post("/v1/actions/create", action).await;
        assert_eq!(created.status, StatusCode::OK, "{}", created.body);
        actions.push(created.body["id"].clone());
    }
    let agent = json!({
        "prompt": {"content": "You help customers."},
        "initial_message": GREETING,
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
        "actions": actions,
        "webhook": {"url": rig.receiver.url, "subscriptions": ["event_action", "event_transcript"]},
    });
    Some((rig, agent))
}

/// A warm transfer on Twilio whose parts land on three replicas: the person's stream on one (the
/// conversation's), the steering number's webhook and the bot leg's stream on another (which
/// takes the conversation over and carries the transfer on), the conference's and the third
/// party's callbacks on the third. It goes as on one replica: the third party is dialled in from
/// the steering number, the bot talks to them on its leg and hands the person over; the call ends
/// `transfer_successful`, each event once, the transcript whole, no "lost you" and no lost action.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_transfer_spans_replicas_as_on_one() {
    use crate::support::fake_openai::Script;
    use crate::support::line::twilio_stream;
    let Some((rig, agent)) = warm_rig().await else { return };
    rig.openai.then(Script::text(&["Sure, I connect you now, please hold."]));
    rig.openai.then(Script::text(&["Hi, a customer wants a refund. ", "Removing participant from hold."]));
    let created = rig
        .post("/v1/calls/create", json!({"from_number": OUR_NUMBER, "to_number": "16505559000", "agent": agent}))
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let call = created.body;
    let id = call["id"].as_str().unwrap().to_owned();
    let person = call["telephony_id"].as_str().unwrap().to_owned();
    let person_stream = Line::Twilio.pick_up(&rig.twilio, &rig.vonage, &call).await;
    let holder = rig.served_by(&person_stream.handshake).unwrap();
    transcript_with(&rig, &id, &format!("BOT: {GREETING}")).await;
    say(&rig, Line::Twilio, &person_stream, 0x11, "Can I talk to the manager?").await;
    transcript_with(&rig, &id, "BOT_ACTION_START: Attempting to add +16505550177 to the conference").await;

    // The conference calls the steering number: its webhook lands on another replica.
    let conference = format!("vocode-{id}");
    let bot_participant = eventually(Duration::from_secs(10), || async {
        rig.twilio.conference(&conference).and_then(|c| c.added.first().cloned())
    })
    .await;
    let bot_replica = (holder + 1) % 3;
    let third = (holder + 2) % 3;
    steer_to(&rig, bot_replica).await;
    let (status, twiml) = rig.twilio.inbound(STEERING, OUR_NUMBER, "CAbotleg").await;
    assert_eq!(status.as_u16(), 200, "{twiml}");
    assert_eq!(routed_to(&rig, "POST", "/telephony/twilio/inbound").await, bot_replica);
    // Its stream too: that replica takes the conversation over.
    steer_to(&rig, bot_replica).await;
    let bot = twilio_stream(&rig.twilio, &twiml, "CAbotleg").await;
    assert_eq!(rig.served_by(&bot.handshake), Some(bot_replica), "the bot leg's stream is on another replica");

    // The person's call is moved into the conference, which ends its stream on the first replica.
    let moved = eventually(Duration::from_secs(15), || async {
        let forms = rig.twilio.requests("POST", &format!("/Calls/{person}"));
        forms.iter().flatten().find(|(k, v)| k == "Twiml" && v.contains("<Conference")).map(|(_, v)| v.clone())
    })
    .await;
    person_stream.stop();
    let events = moved.split("statusCallback=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let sid = rig.twilio.conference(&conference).unwrap().sid;
    steer_to(&rig, third).await;
    assert_eq!(rig.twilio.conference_event(&events, &sid, &person, "participant-join").await.as_u16(), 204);
    assert_eq!(routed_to(&rig, "POST", &format!("/telephony/twilio/conference/{id}")).await, third);

    // The person is put on hold, and the manager dialled in from the steering number.
    eventually(Duration::from_secs(10), || async {
        rig.twilio.conference(&conference).filter(|c| c.on_hold.contains(&person)).map(|_| ())
    })
    .await;
    let third_party = eventually(Duration::from_secs(10), || async {
        rig.twilio.conference(&conference).and_then(|c| c.added.get(1).cloned())
    })
    .await;
    let leg = rig.twilio.call(&third_party);
    assert_eq!((leg.field("From"), leg.field("To")), (Some(STEERING), Some(MANAGER)));

    // The manager answers (news heard on the third replica): the bot speaks with them on its leg.
    steer_to(&rig, third).await;
    assert_eq!(rig.twilio.status(&third_party, "in-progress", &[]).await.as_u16(), 204);
    assert_eq!(routed_to(&rig, "POST", &format!("/conference/{id}/third_party")).await, third);
    transcript_with(&rig, &id, "BOT_ACTION_FINISH: Added +16505550177 to the conference").await;
    say(&rig, Line::Twilio, &bot, 0x22, "Hi, this is the manager.").await;
    let text = transcript_with(&rig, &id, "BOT_ACTION_FINISH: Took the person off hold").await;
    assert!(
        text.contains(
            "HUMAN: Hi, this is the manager.\nBOT: Hi, a customer wants a refund. Removing participant from hold.\n\
             BOT_ACTION_START: Attempting to change the hold"
        ),
        "{text}"
    );
    assert!(!text.contains("lost you"), "the move is not heard: {text}");
    assert!(!text.contains("FAILED"), "no action was lost: {text}");
    assert!(!bot.arrived_samples().is_empty(), "the bot spoke on the conference leg");
    assert!(!rig.twilio.conference(&conference).unwrap().on_hold.contains(&person), "the person is off hold");
    eventually(Duration::from_secs(10), || async {
        let forms = rig.twilio.requests("POST", &format!("/Calls/{bot_participant}"));
        forms.iter().any(|f| f.contains(&("Status".into(), "completed".into()))).then_some(())
    })
    .await;
    bot.stop();

    // The manager hangs up (heard on the first replica): the person is not left alone.
    steer_to(&rig, holder).await;
    assert_eq!(rig.twilio.status(&third_party, "completed", &[]).await.as_u16(), 204);
    eventually(Duration::from_secs(10), || async {
        let forms = rig.twilio.requests("POST", &format!("/Calls/{person}"));
        forms.iter().any(|f| f.contains(&("Status".into(), "completed".into()))).then_some(())
    })
    .await;
    rig.twilio.status(&person, "completed", &[("CallDuration", "95")]).await;
    let ended = eventually(Duration::from_secs(15), || async {
        let call = rig.get(&format!("/v1/calls?id={id}")).await.body;
        (call["status"] == "ended").then_some(call)
    })
    .await;
    assert_eq!(
        (ended["stage"].as_str(), ended["stage_outcome"].as_str()),
        (Some("transfer_successful"), Some("human_disconnected"))
    );

    // Each event once: the two actions' starts and finishes, then the whole transcript.
    let got = eventually(Duration::from_secs(20), || async {
        let got: Vec<Value> = rig.receiver.got().into_iter().filter(|r| r.call_id() == id).map(|r| r.event()).collect();
        got.iter().any(|e| e["type"] == "event_transcript").then_some(got)
    })
    .await;
    let kinds: Vec<(String, bool)> = got
        .iter()
        .filter(|e| e["type"] == "event_action")
        .map(|e| (e["payload"]["action_type"].as_str().unwrap().to_owned(), !e["payload"]["action_output"].is_null()))
        .collect();
    let expected = [
        ("action_add_to_conference", false),
        ("action_add_to_conference", true),
        ("action_set_hold", false),
        ("action_set_hold", true),
    ];
    assert_eq!(kinds, expected.map(|(k, done)| (k.to_owned(), done)), "{got:#?}");
    let finished = got
        .iter()
        .find(|e| e["payload"]["action_type"] == "action_add_to_conference" && !e["payload"]["action_output"].is_null())
        .unwrap();
    assert_eq!(finished["payload"]["action_output"]["response"]["success"], true, "{finished}");
    assert_eq!(got.iter().filter(|e| e["type"] == "event_transcript").count(), 1);
    let logs = rig.logs(bot_replica);
    assert!(logs.contains("the conversation moves to it"), "the bot leg's replica took the conversation over");
    assert!(logs.contains("carrying on an action another process started"), "and carried the transfer on");
    assert!(rig.logs(holder).contains("letting go"), "the first replica let the conversation go");
}

/// Two calls on two replicas ask for the one steering number at once: one gets it (its
/// conference dials the number), the other is refused with the guide's 429 and its bot says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_race_for_one_steering_number() {
    use crate::support::fake_openai::Script;
    let Some((rig, agent)) = warm_rig().await else { return };
    let mut calls = Vec::new();
    for to in ["16505559001", "16505559002"] {
        let created =
            rig.post("/v1/calls/create", json!({"from_number": OUR_NUMBER, "to_number": to, "agent": agent})).await;
        assert_eq!(created.status, StatusCode::OK, "{}", created.body);
        calls.push(created.body);
    }
    let first = Line::Twilio.pick_up(&rig.twilio, &rig.vonage, &calls[0]).await;
    let first_replica = rig.served_by(&first.handshake).unwrap();
    // The second's stream (its third request through the proxy) goes to another replica.
    steer_to(&rig, (first_replica + 2) % 3).await;
    let second = Line::Twilio.pick_up(&rig.twilio, &rig.vonage, &calls[1]).await;
    assert_ne!(rig.served_by(&second.handshake), Some(first_replica), "the calls run on two replicas");
    let ids: Vec<String> = calls.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    for id in &ids {
        transcript_with(&rig, id, &format!("BOT: {GREETING}")).await;
    }
    rig.openai.then(Script::text(&["I connect you now, please hold."]));
    rig.openai.then(Script::text(&["I connect you now, please hold."]));
    rig.openai.then(Script::text(&["Sorry, every line is busy."]));
    futures_util::join!(
        say(&rig, Line::Twilio, &first, 0x31, "The manager, please."),
        say(&rig, Line::Twilio, &second, 0x32, "The manager, please.")
    );

    // Exactly one call's action is refused, with the guide's 429; the other's conference dials
    // the steering number.
    let refused = eventually(Duration::from_secs(20), || async {
        let finished: Vec<(String, Value)> = rig
            .receiver
            .got()
            .into_iter()
            .map(|r| (r.call_id(), r.event()["payload"].clone()))
            .filter(|(_, p)| p["action_type"] == "action_add_to_conference" && !p["action_output"].is_null())
            .collect();
        (!finished.is_empty()).then_some(finished)
    })
    .await;
    assert_eq!(refused.len(), 1, "one refusal: {refused:#?}");
    let (loser, output) = &refused[0];
    assert_eq!(output["action_output"]["response"]["status_code"], 429, "{output}");
    let winner = ids.iter().find(|id| *id != loser).unwrap();
    let dialled = eventually(Duration::from_secs(10), || async {
        rig.twilio.conference(&format!("vocode-{winner}")).and_then(|c| c.added.first().cloned())
    })
    .await;
    assert_eq!(rig.twilio.call(&dialled).field("To"), Some(STEERING));
    assert!(rig.twilio.conference(&format!("vocode-{loser}")).is_none(), "nothing was dialled for the other");
    transcript_with(&rig, loser, "BOT: Sorry, every line is busy.").await;
}
