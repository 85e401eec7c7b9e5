//! The stand-ins: on a sandbox call, and only there, the server fills in with stand-ins for the
//! providers it has not configured, so that a call talks end to end with no account at all. They
//! are the server's, not the sandbox's, and live where the server's real providers live (the
//! conversation may not import the sandbox):
//!
//! | stands in for | where | what it does |
//! |---|---|---|
//! | speech-to-text | `conversation/stt/sandbox.rs` | does not listen: reads what the person said from the call's side channel, and reports it as a live recogniser would |
//! | a language model | `conversation/llm/scripted.rs` | replies by rule, and says it is a stand-in |
//! | a voice | `conversation/tts/tone.rs` | a tone as long as the words would take to say |
//! | do-not-call detection's model | `calls/do_not_call.rs` | a list of phrases |
//!
//! `conversation::agent::Fallbacks` chooses the conversation's, for a call whose side channel the
//! media stream finds in [`Sandbox::spoken_logs`] — which is what the sandbox owns of them: the
//! people write what they say, and when its audio plays, into their call's line; the line's log
//! is kept under the server's id of the call while its stream is open.

use std::sync::Arc;

use super::people::Line;
use super::Sandbox;
use crate::conversation::stt::sandbox::SpokenLogs;

impl Sandbox {
    /// What the people say on each call, by the server's call id: the side channels the stand-in
    /// speech-to-text of a sandbox call reads.
    pub fn spoken_logs(&self) -> Arc<SpokenLogs> {
        self.spoken.clone()
    }

    /// A call's line, under the server's id of the call (as it named it in the stream's
    /// parameters): the stand-in speech-to-text reads its side channel, and
    /// [`line`](Sandbox::line) reports it.
    pub(super) fn bind_line(&self, server_call_id: &str, line: &Arc<Line>) {
        self.spoken.insert(server_call_id, line.spoken.clone());
        self.people.keep_line(server_call_id, line.clone());
    }

    /// The call's stream is over: its side channel goes (its line's report stays).
    pub(super) fn release_side_channel(&self, server_call_id: &str) {
        self.spoken.remove(server_call_id);
    }
}
