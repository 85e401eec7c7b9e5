//! A person on a call's open media stream, step by step: they pick up (on the line, their script
//! starts), and then, until their script is over, the call ends or the stream closes, every tick
//! they speak a frame, every 20 ms the bot's audio plays a frame to their ear (marks reached go
//! back), and what the server sends is queued to play, or answered (a `clear`); then they hang up.

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::ears::{Heard, Hearing};
use super::line::Line;
use super::mouth::{Mouth, Speaking};
use super::playout::Playout;
use super::{Person, Scenario};
use crate::conversation::recording::Side;
use crate::sandbox::carrier::media::{Framing, FromServer};
use crate::sandbox::carrier::SimCall;

/// Plays the person on an open media stream until their script is over, the call ends, or the
/// stream closes; `framing` then holds the sequence number reached (Twilio's `stop` follows it).
/// The person's clock runs at the world's rate, `time_scale`.
pub async fn converse<S>(
    socket: &mut S,
    framing: &mut Framing,
    call: &SimCall,
    scenario: Scenario,
    mouth: Mouth,
    time_scale: f64,
) where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let mut speaking = Speaking::new(time_scale, mouth.noise);
    let (person, script) = pick_up(&call.line, scenario, mouth, time_scale);
    let mut hearing = Hearing::new(&call.line);
    let mut playout = Playout::default();
    let mut speak = tokio::time::interval(speaking.every);
    let mut play = tokio::time::interval(std::time::Duration::from_millis(20));
    play.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = call.media_stop.notified();
    tokio::pin!(stop);
    loop {
        let out = tokio::select! {
            _ = &mut stop => break,
            _ = call.line.finished() => break,
            _ = speak.tick() => {
                if call.is_over() {
                    break;
                }
                vec![framing.media(&speaking.next_frame(&person))]
            }
            _ = play.tick() => play_frame(&person, &mut playout, &mut hearing, framing),
            message = socket.next() => {
                let Some(Ok(message)) = message else { break };
                match framing.read(message) {
                    FromServer::Closed => break,
                    news => take_in(news, &person, &mut playout, &mut hearing, framing),
                }
            }
        };
        if !send_all(socket, out).await {
            script.abort();
            return;
        }
    }
    script.abort();
    hearing.stop(&call.line);
}

/// The person picks up: they are on the line, and their part starts (the line is finished once
/// it is over).
fn pick_up(line: &Arc<Line>, scenario: Scenario, mouth: Mouth, time_scale: f64) -> (Arc<Person>, JoinHandle<()>) {
    line.open();
    let (heard, _) = watch::channel(Heard { talking: false, since: Instant::now() });
    let person = Arc::new(Person {
        to_say: Mutex::default(),
        heard,
        line: line.clone(),
        time_scale,
        script: mouth.script,
        voice: mouth.voice,
    });
    let script = {
        let person = person.clone();
        let line = line.clone();
        tokio::spawn(async move {
            person.act(scenario).await;
            line.finish();
        })
    };
    (person, script)
}

/// 20 ms of the bot's audio plays to the person's ear; the marks reached on the way go back.
fn play_frame(person: &Person, playout: &mut Playout, hearing: &mut Hearing, framing: &mut Framing) -> Vec<Message> {
    let now = Instant::now();
    let (frame, reached) = playout.next_frame();
    let out = send_back(reached, person, framing);
    if !frame.is_empty() {
        person.line.record(Side::Bot, &frame);
    }
    hearing.hear(person, &frame, now);
    out
}

/// What the server sent: the bot's audio and marks are queued to play; a `clear` drops what is
/// queued and sends back the marks still pending (and, on Vonage, `websocket:cleared`).
fn take_in(
    news: FromServer,
    person: &Person,
    playout: &mut Playout,
    hearing: &mut Hearing,
    framing: &mut Framing,
) -> Vec<Message> {
    match news {
        FromServer::Audio(samples) => {
            hearing.audio_arrived(person);
            playout.enqueue(samples);
            Vec::new()
        }
        FromServer::Mark(mark) => {
            playout.mark(mark);
            Vec::new()
        }
        FromServer::Clear => {
            person.line.cleared();
            let mut out = send_back(playout.clear(), person, framing);
            out.extend(framing.cleared());
            out
        }
        FromServer::Closed | FromServer::Other => Vec::new(),
    }
}

/// Marks the person's end has played (or dropped), as they go back to the server.
fn send_back(marks: Vec<Value>, person: &Person, framing: &mut Framing) -> Vec<Message> {
    marks
        .into_iter()
        .map(|mark| {
            person.line.mark_played();
            framing.played(mark)
        })
        .collect()
}

/// Sends what the person's end has to send; false once the stream is gone.
async fn send_all<S: futures_util::Sink<Message> + Unpin>(socket: &mut S, out: Vec<Message>) -> bool {
    for message in out {
        if socket.send(message).await.is_err() {
            return false;
        }
    }
    true
}
