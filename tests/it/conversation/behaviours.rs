//! Turn-taking end to end, each behaviour of the conversational dials shown on Twilio and on
//! Vonage: the real server, an agent given inline to `/v1/calls/create`, a carrier that plays the
//! bot's audio in real time (`line`), fake Deepgram, OpenAI-compatible, ElevenLabs and Azure
//! servers. Waits are checked by lower bounds (the server never answers early) and by the order in
//! which calls with different dials answer the same words, never by tight upper bounds.
//!
//! SQLite only: what is under test is the engine on the call's stream, which no database query
//! shapes (both backends' transcript writes are covered by the tests of `conversation`), and
//! every test here waits in real time.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::line::Line;
use super::{transcript, transcript_has, world, World, GREETING};
use crate::support::eventually;
use crate::support::fake_deepgram::results;
use crate::support::fake_openai::Script;
use crate::support::fake_tts::TtsBehaviour;

/// The bytes the fake voice's lasting audio is made of, one per utterance, so that the carrier can
/// tell how much of which utterance it played.
const GREETING_AUDIO: u8 = 0x3c;
const ANSWER_AUDIO: u8 = 0x5a;
const REPLY_AUDIO: u8 = 0x6e;
const CHECK_IN_AUDIO: u8 = 0x71;

/// One sentence (so one request to the voice), long enough to be cut anywhere.
const ANSWER: &str =
    "Our window tables are free tonight and the terrace opens at six for anyone who likes the evening air.";

/// Runs each named `async fn(World, Line)` on Twilio and on Vonage, on SQLite.
macro_rules! on_both_lines {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn twilio() {
                    if let Some(w) = world(crate::support::Backend::Sqlite).await {
                        super::$name(w, Line::Twilio).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn vonage() {
                    if let Some(w) = world(crate::support::Backend::Sqlite).await {
                        super::$name(w, Line::Vonage).await;
                    }
                }
            }
        )*
    };
}

on_both_lines!(
    the_initial_message_waits_its_delay_and_cannot_be_interrupted,
    low_interrupt_sensitivity_lets_backchannels_and_short_words_pass,
    high_interrupt_sensitivity_stops_at_any_word,
    barge_in_clears_the_carrier_cuts_the_message_and_tells_the_model,
    endpointing_sensitivity_sets_the_wait_after_the_last_words,
    conversation_speed_scales_the_waits,
    an_idle_call_is_asked_once_then_hung_up,
    ivr_navigation_waits_on_hold_past_the_idle_time,
    the_agents_language_reaches_speech_to_text_and_the_voice,
    a_sentence_said_during_the_greeting_is_answered_after_it,
    the_last_words_before_a_hang_up_are_recognised_and_kept,
    a_false_start_at_high_sensitivity_resumes_the_bot_where_it_stopped,
);

/// An agent with the test's dials (ElevenLabs voice, no greeting unless given).
fn agent(dials: Value) -> Value {
    let mut agent = json!({
        "prompt": {"content": "You book tables."},
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
    });
    for (key, value) in dials.as_object().unwrap() {
        agent[key] = value.clone();
    }
    agent
}

fn id(call: &Value) -> String {
    call["id"].as_str().unwrap().to_owned()
}

fn lines(transcript: &str) -> Vec<&str> {
    transcript.lines().collect()
}

/// Greeted: the call on the line, answered, its greeting played and kept, speech-to-text open.
async fn greeted(w: &World, line: Line, dials: Value) -> (String, super::line::Carrier) {
    w.tts.plan([TtsBehaviour::Lasting(Duration::from_millis(200), GREETING_AUDIO)]);
    let mut dials = dials;
    dials["initial_message"] = json!(GREETING);
    let call = line.call(w, agent(dials)).await;
    let carrier = line.answer(w, &call).await;
    transcript_has(w, &id(&call), &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    (id(&call), carrier)
}

async fn the_initial_message_waits_its_delay_and_cannot_be_interrupted(w: World, line: Line) {
    w.tts.plan([TtsBehaviour::Lasting(Duration::from_millis(800), GREETING_AUDIO)]);
    let dials = json!({"initial_message": GREETING, "initial_message_delay": 1.0, "interrupt_sensitivity": "high",
                       "conversation_speed": 2});
    let call = line.call(&w, agent(dials)).await;
    let answered = Instant::now();
    let carrier = line.answer(&w, &call).await;
    w.deepgram.wait_for_connections(1).await;

    // Nothing is said during the delay; then the greeting.
    let first = eventually(Duration::from_secs(5), || async { carrier.first_arrived(None) }).await;
    assert!(first >= answered + Duration::from_secs(1), "the greeting came {:?} after pick-up", first - answered);
    assert_eq!(w.tts.requests()[0].json()["text"], GREETING);

    // The person talks over it (at high sensitivity, where any word would interrupt an
    // interruptible message): it goes on to its end.
    eventually(Duration::from_secs(5), || async { (carrier.played_ms_of(GREETING_AUDIO) >= 200).then_some(()) }).await;
    w.deepgram.send(results("Hello? Who is this calling me, please?", false, false)).await;
    w.deepgram.send(results("Hello? Who is this calling me, please?", true, true)).await;
    assert!(carrier.played_ms_of(GREETING_AUDIO) < 800, "the person spoke while the greeting played");
    let text = transcript_has(&w, &id(&call), &format!("BOT: {GREETING}")).await;
    assert!(lines(&text).contains(&format!("BOT: {GREETING}").as_str()), "{text}");
    assert!(carrier.clears().is_empty(), "{:?}", carrier.clears());
    assert_eq!(carrier.played_ms_of(GREETING_AUDIO), 800, "all of it was played");
}

/// The bot answers "A table for two." with [`ANSWER`], whose audio lasts `length`; returns once
/// the carrier has played `into` of it.
async fn bot_answering(w: &World, carrier: &super::line::Carrier, length: Duration, into: Duration) {
    w.tts.plan([TtsBehaviour::Lasting(length, ANSWER_AUDIO)]);
    let chunks = [
        "Our window tables are free tonight ",
        "and the terrace opens at six ",
        "for anyone who likes the evening air.",
    ];
    assert_eq!(chunks.concat(), ANSWER);
    w.openai.then(Script::text(&chunks));
    w.deepgram.send(results("A table for two.", true, true)).await;
    let into = into.as_millis() as u64;
    eventually(Duration::from_secs(10), || async { (carrier.played_ms_of(ANSWER_AUDIO) >= into).then_some(()) }).await;
}

async fn low_interrupt_sensitivity_lets_backchannels_and_short_words_pass(w: World, line: Line) {
    let (id, carrier) = greeted(&w, line, json!({"interrupt_sensitivity": "low", "conversation_speed": 2})).await;
    bot_answering(&w, &carrier, Duration::from_millis(1500), Duration::from_millis(300)).await;
    let said = ["Mhm.", "Yeah.", "I see.", "Two people."];
    for words in said {
        w.deepgram.send(results(words, false, false)).await;
        w.deepgram.send(results(words, true, true)).await;
    }
    assert!(carrier.played_ms_of(ANSWER_AUDIO) < 1500, "the person spoke while the bot did");

    let text = transcript_has(&w, &id, "BOT: Our window").await;
    assert_eq!(
        lines(&text),
        [
            format!("BOT: {GREETING}"),
            "HUMAN: A table for two.".into(),
            "HUMAN: Mhm.".into(),
            "HUMAN: Yeah.".into(),
            "HUMAN: I see.".into(),
            "HUMAN: Two people.".into(),
            format!("BOT: {ANSWER}"),
        ],
        "the bot went on, and what the person said is kept"
    );
    assert!(carrier.clears().is_empty(), "{:?}", carrier.clears());
    assert_eq!(carrier.played_ms_of(ANSWER_AUDIO), 1500, "all of the answer was played");
    assert_eq!(w.openai.received().len(), 1, "no backchannel was answered");
}

async fn high_interrupt_sensitivity_stops_at_any_word(w: World, line: Line) {
    let (id, carrier) = greeted(&w, line, json!({"interrupt_sensitivity": "high", "conversation_speed": 2})).await;
    bot_answering(&w, &carrier, Duration::from_millis(2000), Duration::from_millis(500)).await;
    w.deepgram.send(results("Mhm.", false, false)).await;
    let clear = eventually(Duration::from_secs(5), || async { carrier.clears().first().cloned() }).await;
    assert_eq!(clear.message, line.clear_message());
    w.deepgram.send(results("Mhm.", true, true)).await;

    let text = transcript_has(&w, &id, "HUMAN: Mhm.").await;
    let said = lines(&text);
    assert_eq!(said[..2], [format!("BOT: {GREETING}"), "HUMAN: A table for two.".into()]);
    let cut = said[2].strip_prefix("BOT: ").unwrap();
    assert!(!cut.is_empty() && ANSWER.starts_with(cut) && cut.len() < ANSWER.len(), "{text}");
    assert!(carrier.played_ms_of(ANSWER_AUDIO) < 2000, "the answer stopped");
}

async fn barge_in_clears_the_carrier_cuts_the_message_and_tells_the_model(w: World, line: Line) {
    let (id, carrier) = greeted(&w, line, json!({"conversation_speed": 2})).await;
    let total = 2000;
    bot_answering(&w, &carrier, Duration::from_millis(total), Duration::from_millis(1000)).await;

    // The person barges in: the clear goes out on their first words, before their turn is over.
    let interrupting = "Wait, actually make it four people.";
    let said_at = Instant::now();
    w.deepgram.send(results("Wait, actually make it four", false, false)).await;
    let clear = eventually(Duration::from_secs(5), || async { carrier.clears().first().cloned() }).await;
    assert_eq!(clear.message, line.clear_message());
    assert!(clear.at - said_at < Duration::from_secs(1), "cleared {:?} after the words", clear.at - said_at);
    w.tts.plan([TtsBehaviour::Lasting(Duration::from_millis(200), REPLY_AUDIO)]);
    w.openai.then(Script::text(&["Four ", "it is."]));
    w.deepgram.send(results(interrupting, true, true)).await;

    // The bot's message is what the person heard of it.
    let text = transcript_has(&w, &id, "BOT: Four it is.").await;
    let said = lines(&text);
    assert_eq!(said.len(), 5, "{text}");
    assert_eq!(said[..2], [format!("BOT: {GREETING}"), "HUMAN: A table for two.".into()]);
    assert_eq!(said[3..], [format!("HUMAN: {interrupting}"), "BOT: Four it is.".into()]);
    let cut = said[2].strip_prefix("BOT: ").unwrap();
    assert!(!cut.is_empty() && ANSWER.starts_with(cut) && cut.len() < ANSWER.len(), "{text}");
    let heard = carrier.played_ms_of_before(ANSWER_AUDIO, &clear);
    let chars = ANSWER.chars().count() as u64;
    let longest_word = ANSWER.split(' ').map(str::len).max().unwrap() as u64;
    // Marks come every 100 ms, and the cut falls back to a word's start.
    let (most, least) =
        (chars * heard / total + 1, (chars * heard.saturating_sub(300) / total).saturating_sub(longest_word + 1));
    let kept = cut.chars().count() as u64;
    assert!(
        (least..=most).contains(&kept),
        "{kept} characters kept ({cut:?}) of {chars}, when {heard} ms of {total} were played: {least}..={most} expected"
    );
    // Nothing more of it was played after the clear.
    eventually(Duration::from_secs(5), || async { (carrier.played_ms_of(REPLY_AUDIO) == 200).then_some(()) }).await;
    assert_eq!(carrier.played_ms_of(ANSWER_AUDIO), heard, "nothing of the cut message played after the clear");

    // The model is told it was cut off.
    let asked = w.openai.received();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        asked[1].body["messages"],
        json!([{"role": "system", "content": "You book tables."},
               {"role": "assistant", "content": GREETING},
               {"role": "user", "content": "A table for two."},
               {"role": "assistant", "content": format!("{cut}-")},
               {"role": "user", "content": interrupting}])
    );
}

/// Calls on `line`, one per agent, each answered and listening; the `i`th Deepgram connection is
/// the `i`th call's.
async fn listening(w: &World, line: Line, agents: Vec<Value>) -> Vec<super::line::Carrier> {
    let mut carriers = Vec::new();
    for (i, agent) in agents.into_iter().enumerate() {
        let call = line.call(w, agent).await;
        carriers.push(line.answer(w, &call).await);
        w.deepgram.wait_for_connections(i + 1).await;
    }
    carriers
}

/// Says the same unfinished sentence (a final, not `speech_final`) on each call, in the order
/// given; returns, by the calls' prompts, when each call's model was asked to answer and how long
/// after the words that was.
async fn answer_times(w: &World, prompts: &[String], order: &[usize]) -> (Vec<Instant>, Vec<Duration>) {
    let mut said = vec![Instant::now(); prompts.len()];
    for &i in order {
        said[i] = Instant::now();
        w.deepgram.send_on(i, results("I would like a table for", true, false)).await;
    }
    let asked = eventually(Duration::from_secs(10), || async {
        let received = w.openai.received();
        let at = |prompt: &String| received.iter().find(|r| r.body["messages"][0]["content"] == **prompt).map(|r| r.at);
        prompts.iter().map(at).collect::<Option<Vec<Instant>>>()
    })
    .await;
    let waited = asked.iter().zip(&said).map(|(asked, said)| *asked - *said).collect();
    (asked, waited)
}

async fn endpointing_sensitivity_sets_the_wait_after_the_last_words(w: World, line: Line) {
    let dials = ["sensitive", "relaxed", "auto"];
    let prompts: Vec<String> = dials.iter().map(|d| format!("You book tables, {d}ly.")).collect();
    let agents = dials
        .iter()
        .zip(&prompts)
        .map(|(dial, prompt)| agent(json!({"prompt": {"content": prompt}, "endpointing_sensitivity": dial})))
        .collect();
    let _carriers = listening(&w, line, agents).await;
    let endpointing: Vec<Vec<String>> = w.deepgram.connections().iter().map(|c| c.param("endpointing")).collect();
    assert_eq!(endpointing, [["300"], ["500"], ["500"]], "Deepgram's own endpointing follows the dial");

    // The sensitive call is told last, and still answers first.
    let (asked, waited) = answer_times(&w, &prompts, &[2, 1, 0]).await;
    assert!(waited[0] >= Duration::from_millis(600), "sensitive waits a short pause: {waited:?}");
    assert!(waited[1] >= Duration::from_millis(1000), "relaxed waits a longer pause: {waited:?}");
    assert!(waited[2] >= Duration::from_millis(1000), "auto is relaxed: {waited:?}");
    assert!(asked[0] < asked[1] && asked[0] < asked[2], "sensitive answers before relaxed and auto: {waited:?}");
}

async fn conversation_speed_scales_the_waits(w: World, line: Line) {
    let speeds = [0.5, 1.0, 2.0];
    let prompts: Vec<String> = speeds.iter().map(|s| format!("You book tables at speed {s}.")).collect();
    let agents = speeds
        .iter()
        .zip(&prompts)
        .map(|(speed, prompt)| agent(json!({"prompt": {"content": prompt}, "conversation_speed": speed})))
        .collect();
    let _carriers = listening(&w, line, agents).await;
    let endpointing: Vec<Vec<String>> = w.deepgram.connections().iter().map(|c| c.param("endpointing")).collect();
    assert_eq!(endpointing, [["1000"], ["500"], ["250"]], "Deepgram's own endpointing scales too");

    // Relaxed, after an unfinished sentence: 1 s at normal speed. The fastest is told last.
    let (asked, waited) = answer_times(&w, &prompts, &[0, 1, 2]).await;
    assert!(waited[0] >= Duration::from_millis(2000), "half speed waits twice as long: {waited:?}");
    assert!(waited[1] >= Duration::from_millis(1000), "{waited:?}");
    assert!(waited[2] >= Duration::from_millis(500), "double speed, half as long: {waited:?}");
    assert!(asked[2] < asked[1] && asked[1] < asked[0], "the faster, the sooner: {waited:?}");
}

async fn an_idle_call_is_asked_once_then_hung_up(w: World, line: Line) {
    w.tts.plan([
        TtsBehaviour::Lasting(Duration::from_millis(200), GREETING_AUDIO),
        TtsBehaviour::Lasting(Duration::from_millis(200), CHECK_IN_AUDIO),
    ]);
    let dials = json!({"initial_message": GREETING, "idle_time_seconds": 1, "ask_if_human_present_on_idle": true,
                       "conversation_speed": 2});
    let call = line.call(&w, agent(dials)).await;
    let carrier = line.answer(&w, &call).await;

    // Asked once, after the idle time…
    let text = transcript_has(&w, &id(&call), "BOT: Are you still there?").await;
    assert_eq!(text, format!("BOT: {GREETING}\nBOT: Are you still there?\n"));
    let greeted = carrier.finished_playing(GREETING_AUDIO).unwrap();
    let asked = eventually(Duration::from_secs(5), || async { carrier.first_arrived(Some(CHECK_IN_AUDIO)) }).await;
    assert!(asked >= greeted + Duration::from_secs(1), "asked {:?} after the greeting", asked - greeted);

    // …then hung up, by the bot.
    eventually(Duration::from_secs(10), || async { line.hung_up(&w, &call).then_some(()) }).await;
    let texts: Vec<Value> = w.tts.requests().iter().map(|r| r.json()["text"].clone()).collect();
    assert_eq!(texts, [json!(GREETING), json!("Are you still there?")], "asked once");
    assert_eq!(carrier.played_ms_of(CHECK_IN_AUDIO), 200, "the question was heard before the hang-up");
    let ended = eventually(Duration::from_secs(10), || async {
        let (_, call) = w.app.get(&format!("/v1/calls?id={}", id(&call))).await;
        (call["status"] == "ended").then_some(call)
    })
    .await;
    assert_eq!(
        (ended["stage"].clone(), ended["stage_outcome"].clone()),
        (json!("picked_up"), json!("bot_disconnected"))
    );
}

async fn ivr_navigation_waits_on_hold_past_the_idle_time(w: World, line: Line) {
    let dials = json!({"ivr_navigation_mode": "default", "idle_time_seconds": 1, "ask_if_human_present_on_idle": true,
                       "conversation_speed": 2});
    let (id, _carrier) = greeted(&w, line, dials).await;
    // On hold, silent, well past the idle time: no check-in, no hang-up (the limit is 10 minutes).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(w.tts.requests().len(), 1, "only the greeting was said");
    assert_eq!(transcript(&w, &id).await, json!(format!("BOT: {GREETING}\n")));
    let (_, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(call["status"], "in_progress");
    assert!(!line.hung_up(&w, &call));
    // Off hold: the bot is still there, and answers.
    w.deepgram.send(results("Thanks for holding, how can I help?", true, true)).await;
    transcript_has(&w, &id, "BOT: Hello from the fake.").await;
}

async fn the_agents_language_reaches_speech_to_text_and_the_voice(w: World, line: Line) {
    let greeting = "Hola, ¿en qué puedo ayudarle?";
    let dials = json!({"language": "es", "initial_message": greeting, "conversation_speed": 2,
                       "voice": {"type": "voice_azure", "voice_name": "es-ES-ElviraNeural"}});
    let call = line.call(&w, agent(dials)).await;
    let carrier = line.answer(&w, &call).await;

    let connection = &w.deepgram.wait_for_connections(1).await[0];
    assert_eq!(connection.param("language"), ["es"]);
    let frame = vec![0x21u8; line.bytes(Duration::from_millis(20))];
    carrier.speak(&frame);
    eventually(Duration::from_secs(5), || async { w.deepgram.connections()[0].audio.ends_with(&frame).then_some(()) })
        .await;

    transcript_has(&w, &id(&call), &format!("BOT: {greeting}")).await;
    let spoken = &w.tts.requests()[0];
    assert_eq!(spoken.path, "/cognitiveservices/v1");
    assert_eq!(spoken.headers.get("x-microsoft-outputformat").map(String::as_str), Some(line.azure_format()));
    assert!(spoken.body.contains("xml:lang='es-ES'") && spoken.body.contains("Hola"), "{}", spoken.body);
    assert!(carrier.first_arrived(None).is_some(), "the voice's audio reached the carrier");
}

async fn a_sentence_said_during_the_greeting_is_answered_after_it(w: World, line: Line) {
    w.tts.plan([
        TtsBehaviour::Lasting(Duration::from_millis(1000), GREETING_AUDIO),
        TtsBehaviour::Lasting(Duration::from_millis(200), REPLY_AUDIO),
    ]);
    let call = line.call(&w, agent(json!({"initial_message": GREETING, "conversation_speed": 2}))).await;
    let carrier = line.answer(&w, &call).await;
    w.deepgram.wait_for_connections(1).await;
    eventually(Duration::from_secs(5), || async { (carrier.played_ms_of(GREETING_AUDIO) >= 200).then_some(()) }).await;

    // A whole sentence, said and finished while the greeting (which cannot be interrupted) plays.
    let asked = "What time do you open tonight?";
    w.openai.then(Script::text(&["We open ", "at six."]));
    w.deepgram.send(results("What time do", false, false)).await;
    w.deepgram.send(results(asked, true, true)).await;
    assert!(carrier.played_ms_of(GREETING_AUDIO) < 1000, "the person spoke while the greeting played");

    let text = transcript_has(&w, &id(&call), "BOT: We open at six.").await;
    assert_eq!(lines(&text), [format!("BOT: {GREETING}"), format!("HUMAN: {asked}"), "BOT: We open at six.".into()]);
    assert_eq!(carrier.played_ms_of(GREETING_AUDIO), 1000, "the greeting was played whole");
    assert!(carrier.clears().is_empty(), "{:?}", carrier.clears());
    let greeted = carrier.finished_playing(GREETING_AUDIO).expect("the greeting played");
    let answered = eventually(Duration::from_secs(5), || async { carrier.first_arrived(Some(REPLY_AUDIO)) }).await;
    assert!(answered >= greeted, "answered after the greeting, not over it");
    let asked_model = w.openai.received();
    assert_eq!(asked_model.len(), 1);
    assert_eq!(asked_model[0].body["messages"][2], json!({"role": "user", "content": asked}));
}

async fn the_last_words_before_a_hang_up_are_recognised_and_kept(w: World, line: Line) {
    w.tts.plan([TtsBehaviour::Lasting(Duration::from_millis(200), GREETING_AUDIO)]);
    let webhook = json!({"subscriptions": ["event_message", "event_transcript"], "url": w.receiver.url});
    let dials = json!({"initial_message": GREETING, "webhook": webhook});
    let call = line.call_with(&w, agent(dials), json!({"run_do_not_call_detection": true})).await;
    let id = id(&call);
    let carrier = line.answer(&w, &call).await;
    transcript_has(&w, &id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;

    // The person is still being heard when they hang up: Deepgram has only guessed at the words,
    // and gives the final ones when it is told to finish (Finalize).
    let last = "Please take me off your list.";
    w.deepgram.on_finalize(vec![results(last, true, false)]);
    w.deepgram.send(results("Please take me off", false, false)).await;
    // The only model request left is do-not-call detection's.
    w.openai.then(Script::text(&["True."]));
    match line {
        Line::Twilio => carrier.stop(),
        Line::Vonage => carrier.close(),
    }

    let text = transcript_has(&w, &id, &format!("HUMAN: {last}")).await;
    assert_eq!(lines(&text), [format!("BOT: {GREETING}"), format!("HUMAN: {last}")]);
    let connection = eventually(Duration::from_secs(10), || async {
        w.deepgram.connections().into_iter().next().filter(|c| !c.open)
    })
    .await;
    assert_eq!(connection.controls, ["Finalize", "CloseStream"], "finished, then closed");

    let got = eventually(Duration::from_secs(20), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        let got = w.receiver.got();
        got.iter().any(|r| r.kind() == "event_transcript").then_some(got)
    })
    .await;
    w.app.drain_jobs(Duration::ZERO).await;
    let kinds: Vec<String> = got.iter().map(|r| r.kind()).collect();
    assert_eq!(kinds, ["event_message", "event_message", "event_transcript"]);
    assert_eq!(got[1].event()["payload"]["sender"], "human");
    assert_eq!(got[1].event()["payload"]["text"], last);
    assert_eq!(got[2].event()["payload"]["transcript"], json!(text));

    // Do-not-call detection classified the transcript with the last words in it.
    let classified = w.openai.received();
    assert_eq!(classified.len(), 1, "no answer to the last words, one classification");
    assert!(classified[0].body["messages"][1]["content"].as_str().is_some_and(|t| t.contains(last)), "{classified:?}");
    let (_, row) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(row["do_not_call_result"], true, "{row}");
}

async fn a_false_start_at_high_sensitivity_resumes_the_bot_where_it_stopped(w: World, line: Line) {
    let (id, carrier) = greeted(&w, line, json!({"interrupt_sensitivity": "high", "conversation_speed": 2})).await;
    let total = 2000;
    bot_answering(&w, &carrier, Duration::from_millis(total), Duration::from_millis(600)).await;

    // A first guess stops the bot at once; no words follow.
    w.deepgram.send(results("Uh", false, false)).await;
    let clear = eventually(Duration::from_secs(5), || async { carrier.clears().first().cloned() }).await;
    assert_eq!(clear.message, line.clear_message());
    let before = carrier.played_ms_of_before(ANSWER_AUDIO, &clear);
    assert!(before < total, "stopped before its end");

    // The bot goes on from where it stopped, and its message is whole.
    let text = transcript_has(&w, &id, &format!("BOT: {ANSWER}")).await;
    assert_eq!(lines(&text), [format!("BOT: {GREETING}"), "HUMAN: A table for two.".into(), format!("BOT: {ANSWER}")]);
    assert_eq!(carrier.clears().len(), 1);
    let played = carrier.played_ms_of(ANSWER_AUDIO);
    // What was played after the last mark it echoed before the stop (marks come every 100 ms) is
    // all that is played twice; Vonage echoes no marks, and the server's clock, a few ms ahead of
    // the carrier's playback, may skip as much.
    assert!((total - 60..=total + 160).contains(&played), "{played} ms played of {total} ({before} before the stop)");
    assert_eq!(w.openai.received().len(), 1, "the false start was not answered");
}

mod the_local_recogniser_keeps_the_last_words_before_a_hang_up {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twilio() {
        super::the_local_recogniser_keeps_the_last_words_before_a_hang_up(Line::Twilio).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vonage() {
        super::the_local_recogniser_keeps_the_last_words_before_a_hang_up(Line::Vonage).await;
    }
}

/// With no cloud recogniser, the local one (as installed: SKIPPED without it) hears the caller's
/// real speech; the caller hangs up the moment their sentence ends, long before its end of turn
/// (0.5 speed: a second of silence), and the utterance in progress is transcribed when the
/// audio ends and kept.
async fn the_local_recogniser_keeps_the_last_words_before_a_hang_up(line: Line) {
    use vocode_server::conversation::audio::Encoding;
    use vocode_server::conversation::tts::flite::Flite;
    use vocode_server::conversation::tts::Voice;

    let Some((dir, program)) = crate::speech::installed() else { return };
    let local = |c: &mut vocode_server::config::ConversationArgs| {
        (c.deepgram_api_key, c.deepgram_url, c.speech_dir) = (None, None, Some(dir.clone()));
    };
    let Some(w) = super::world_with(crate::support::Backend::Sqlite, local).await else { return };
    // Loaded before the call, so that the call's recogniser is open before the person speaks.
    w.app.state.local_speech.recognizer().await.expect("the local recogniser loads");
    let said = "Please take me off your calling list.";
    let encoding = match line {
        Line::Twilio => Encoding::Mulaw8k,
        Line::Vonage => Encoding::Linear16k,
    };
    let mut audio = Vec::new();
    let mut stream = Flite::new(&program, "awb").unwrap().synthesize(said, encoding).await.unwrap();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        audio.extend(chunk.unwrap());
    }

    w.tts.plan([TtsBehaviour::Lasting(Duration::from_millis(200), GREETING_AUDIO)]);
    let webhook = json!({"subscriptions": ["event_message", "event_transcript"], "url": w.receiver.url});
    let dials = json!({"initial_message": GREETING, "conversation_speed": 0.5, "webhook": webhook});
    let call = line.call(&w, agent(dials)).await;
    let id = id(&call);
    let carrier = line.answer(&w, &call).await;
    transcript_has(&w, &id, &format!("BOT: {GREETING}")).await;

    // A carrier's pace: a frame every 20 ms, a little silence first; then the call ends.
    let frame = encoding.bytes_for_ms(20);
    let silence = vec![encoding.silence_byte(); encoding.bytes_for_ms(300)];
    let mut every_frame = tokio::time::interval(Duration::from_millis(20));
    for chunk in silence.chunks(frame).chain(audio.chunks(frame)) {
        every_frame.tick().await;
        let mut chunk = chunk.to_vec();
        chunk.resize(frame, encoding.silence_byte());
        carrier.speak(&chunk);
    }
    match line {
        Line::Twilio => carrier.stop(),
        Line::Vonage => carrier.close(),
    }

    let got = eventually(Duration::from_secs(30), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        let got = w.receiver.got();
        got.iter().any(|r| r.kind() == "event_transcript").then_some(got)
    })
    .await;
    let text = transcript(&w, &id).await.as_str().unwrap_or_default().to_owned();
    let human: Vec<&str> = lines(&text).into_iter().filter_map(|l| l.strip_prefix("HUMAN: ")).collect();
    assert_eq!(human.len(), 1, "the sentence, once: {text}");
    let rate = crate::speech::wer(said, human[0]);
    assert!(rate <= 0.25, "{said:?} was heard as {:?} (WER {rate:.2})", human[0]);
    let messages: Vec<Value> =
        got.iter().filter(|r| r.kind() == "event_message").map(|r| r.event()["payload"].clone()).collect();
    assert!(messages.iter().any(|m| m["sender"] == "human" && m["text"] == human[0]), "{messages:?}");
    let sent = got.iter().find(|r| r.kind() == "event_transcript").unwrap().event();
    assert_eq!(sent["payload"]["transcript"], json!(text));
    assert!(w.openai.received().is_empty(), "nobody was left to answer");
}
