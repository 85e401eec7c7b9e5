//! Recordings: every sandbox call keeps one, served where the carrier says it is (Twilio's
//! `Recordings/RE…`, Vonage's `recordings/{uuid}`) — both sides of the call's line mixed, as a WAV
//! file, once anybody on it made a sound; a few seconds of silent MP3 for a call that stayed
//! silent.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Protocol, SandboxState, SimCall};
use crate::sandbox::Sandbox;

impl Sandbox {
    /// Where the carrier says a call's recording is.
    pub(super) fn recording_url(&self, call: &SimCall) -> String {
        let public_base = &self.carrier.public_base;
        match call.protocol {
            Protocol::Twilio => format!(
                "{public_base}/sandbox/twilio/2010-04-01/Accounts/{}/Recordings/RE{}",
                call.account_sid,
                &call.id[2..]
            ),
            Protocol::Vonage => format!("{public_base}/sandbox/vonage/recordings/{}", call.id),
        }
    }
}

/// A call's recording: both sides mixed (8 kHz, 16-bit, mono), or silence.
fn recording(call: Option<Arc<SimCall>>) -> Response {
    match call.and_then(|call| call.line.wav()) {
        Some(wav) => ([(header::CONTENT_TYPE, "audio/wav")], wav).into_response(),
        None => ([(header::CONTENT_TYPE, "audio/mpeg")], silent_mp3(40)).into_response(),
    }
}

pub async fn twilio_recording(State(sb): SandboxState, Path((_account, file)): Path<(String, String)>) -> Response {
    let sid = file.split('.').next().unwrap_or_default();
    recording(sid.strip_prefix("RE").and_then(|rest| sb.carrier.call(&format!("CA{rest}"))))
}

pub async fn vonage_recording(State(sb): SandboxState, Path(file): Path<String>) -> Response {
    recording(sb.carrier.call(&file))
}

/// A 417-byte MPEG-1 Layer III frame of silence (128 kbit/s, 44.1 kHz), repeated.
fn silent_mp3(frames: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 417];
    frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
    frame.repeat(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silent_recording_is_whole_mp3_frames() {
        let mp3 = silent_mp3(3);
        assert_eq!(mp3.len(), 3 * 417);
        assert_eq!(&mp3[417..419], &[0xFF, 0xFB]);
    }
}
