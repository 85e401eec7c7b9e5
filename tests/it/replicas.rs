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
//!   sends to each again once it is back.
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

use crate::support::fake_deepgram::results;
use crate::support::line::{Carrier, Line};
use crate::support::{eventually, link_twilio_number, Backend, Received, Rig, TestDb};

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
    let last = *expected.last().unwrap();
    eventually(Duration::from_secs(30), || async {
        let got = rig.receiver.got();
        ids.iter().all(|id| got.iter().any(|r| r.call_id() == *id && r.kind() == last)).then_some(())
    })
    .await;
    let got = rig.receiver.got();
    let mut by_call = BTreeMap::new();
    for id in ids {
        let mine: Vec<Received> = got.iter().filter(|r| r.call_id() == *id).cloned().collect();
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
