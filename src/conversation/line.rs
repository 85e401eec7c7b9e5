//! What a carrier's line is like, as the conversation needs to know it: the one place these facts
//! are decided for each carrier (the media streams frame by it, the engine paces and presses keys
//! by it, `calls/create` checks an agent's providers against it).

use super::audio::Encoding;
use crate::domain::call::Provider;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// The audio's encoding, both ways.
    pub encoding: Encoding,
    /// Whether the carrier echoes marks once the audio before them has played (Twilio does;
    /// Vonage's `notify` answers are not confirmed, so the clock tells what was played).
    pub echoes_marks: bool,
    /// Whether keys are pressed as tones in the call's audio (Twilio, and the sandbox's Twilio),
    /// or through the carrier's own API (Vonage's DTMF endpoint).
    pub keys_in_band: bool,
}

impl Line {
    pub const TWILIO: Line = Line { encoding: Encoding::Mulaw8k, echoes_marks: true, keys_in_band: true };
    pub const VONAGE: Line = Line { encoding: Encoding::Linear16k, echoes_marks: false, keys_in_band: false };

    pub fn of(provider: Provider) -> Line {
        match provider {
            Provider::Twilio => Line::TWILIO,
            Provider::Vonage => Line::VONAGE,
        }
    }
}
