//! `action_dtmf`: the bot presses keys (to find its way through a phone menu) — as tones on the
//! call's audio where the carrier carries them (Twilio, the sandbox), else through the carrier's
//! DTMF API (Vonage).
//!
//! The tones: each key's two DTMF frequencies (ITU-T Q.23) for 300 ms, then 100 ms of silence
//! (vocode's timing), in the call's encoding — heard by the far end as the carrier would carry a
//! key pressed on a handset.

use serde_json::{json, Map, Value};

use super::super::audio::Encoding;
use super::{ActionKind, ActionRequest, Line, Offer, Outcome, Plan, Respond};

pub const DTMF: &str = "action_dtmf";

const DESCRIPTION: &str = "Presses a string numbers using DTMF tones.";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dtmf;

impl ActionKind for Dtmf {
    fn action_type(&self) -> &str {
        DTMF
    }

    fn offer(&self) -> Option<Offer> {
        let parameters = json!({"type": "object", "properties": {"buttons": {"type": "string",
                                "description": "The buttons to press."}}, "required": ["buttons"]});
        Some(Offer { description: DESCRIPTION.to_owned(), parameters, respond: Respond::Never })
    }

    fn check(&self, params: &Map<String, Value>) -> Result<(), String> {
        let buttons = params.get("buttons").and_then(Value::as_str).unwrap_or_default();
        if buttons.is_empty() || !buttons.chars().all(is_key) {
            return Err(format!("{buttons:?} are not keys of a phone (0-9, *, #, A-D)"));
        }
        Ok(())
    }

    fn attempt(&self, params: &Value) -> String {
        format!("Attempting to press numbers: {}", python_list(buttons(params)))
    }

    fn result(&self, params: &Value, outcome: &Outcome) -> String {
        if outcome.success {
            format!("Pressed numbers {} successfully", python_list(buttons(params)))
        } else {
            format!("Failed to press numbers {}", python_list(buttons(params)))
        }
    }

    fn plan(&self, params: &Value, line: &Line) -> Plan {
        let keys = buttons(params);
        if line.keys_in_band {
            Plan::PlayInBand(tones(keys, line.encoding))
        } else {
            Plan::Outside(ActionRequest::Keys { keys: keys.to_owned() })
        }
    }
}

/// The keys the model asked for.
fn buttons(params: &Value) -> &str {
    params["buttons"].as_str().unwrap_or("")
}

/// `['1', '2']`: how vocode writes the keys pressed.
fn python_list(buttons: &str) -> String {
    let items: Vec<String> = buttons.chars().map(|c| format!("'{c}'")).collect();
    format!("[{}]", items.join(", "))
}

const TONE_MS: u32 = 300;
const GAP_MS: u32 = 100;
/// Each of the two tones' amplitude (of 32767): together well above a line's noise, never clipping.
const LEVEL: f32 = 8_000.0;

/// Whether `key` is one of a phone's sixteen keys.
pub fn is_key(key: char) -> bool {
    frequencies(key).is_some()
}

/// The (low, high) frequencies of a key.
fn frequencies(key: char) -> Option<(f32, f32)> {
    let (row, column) = match key.to_ascii_uppercase() {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    const LOW: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
    const HIGH: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    Some((LOW[row], HIGH[column]))
}

/// The audio of pressing `keys` (keys that are not a phone's are skipped).
pub fn tones(keys: &str, encoding: Encoding) -> Vec<u8> {
    let rate = encoding.sample_rate() as f32;
    let per_ms = encoding.sample_rate() / 1000;
    let mut samples: Vec<i16> = Vec::new();
    for (low, high) in keys.chars().filter_map(frequencies) {
        let tone = (TONE_MS * per_ms) as usize;
        samples.extend((0..tone).map(|i| {
            let t = i as f32 / rate;
            let value =
                LEVEL * ((2.0 * std::f32::consts::PI * low * t).sin() + (2.0 * std::f32::consts::PI * high * t).sin());
            value as i16
        }));
        samples.extend(std::iter::repeat_n(0, (GAP_MS * per_ms) as usize));
    }
    encoding.encode(&samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The power of `frequency` in `samples` (Goertzel), relative to the samples' energy.
    fn share(samples: &[i16], frequency: f32, rate: f32) -> f32 {
        let coeff = 2.0 * (2.0 * std::f32::consts::PI * frequency / rate).cos();
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &x in samples {
            let s0 = f32::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let energy: f32 = samples.iter().map(|&x| f32::from(x) * f32::from(x)).sum();
        power / (energy * samples.len() as f32 / 2.0)
    }

    #[test]
    fn each_key_sounds_its_two_frequencies_for_300_ms_then_rests_100() {
        for encoding in [Encoding::Mulaw8k, Encoding::Linear16k] {
            let rate = encoding.sample_rate() as f32;
            let samples = encoding.decode(&tones("5#", encoding));
            let per_ms = encoding.sample_rate() as usize / 1000;
            assert_eq!(samples.len(), 2 * 400 * per_ms, "{encoding:?}");
            let five = &samples[..300 * per_ms];
            // 770 + 1336 Hz: each carries about half the energy; 697 and 1209 (the neighbours) none.
            assert!(share(five, 770.0, rate) > 0.3 && share(five, 1336.0, rate) > 0.3, "{encoding:?}");
            assert!(share(five, 697.0, rate) < 0.05 && share(five, 1209.0, rate) < 0.05, "{encoding:?}");
            assert!(samples[300 * per_ms..400 * per_ms].iter().all(|&s| s.abs() < 64), "a rest between keys");
            let pound = &samples[400 * per_ms..700 * per_ms];
            assert!(share(pound, 941.0, rate) > 0.3 && share(pound, 1477.0, rate) > 0.3, "{encoding:?}");
        }
        assert!(tones("x", Encoding::Mulaw8k).is_empty());
        assert!(is_key('d') && is_key('*') && !is_key('x'));
    }
}
