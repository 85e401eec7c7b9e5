//! ElevenLabs, Azure Speech, Rime and Play.ht against fakes of each: the request each voice sends
//! for either encoding, audio streamed through as it arrives (for Rime and Play.ht, the samples of
//! their WAV files in the call's encoding), and errors that say what the provider said without
//! showing the key.

use std::time::Duration;

use futures_util::TryStreamExt;
use vocode_server::conversation::audio::Encoding;
use vocode_server::conversation::tts::{
    AudioStream, Azure, AzureSettings, ElevenLabs, ElevenLabsSettings, PlayHt, PlayHtSettings, Rime, RimeSettings,
    TtsError, Voice,
};

use crate::support::fake_tts::{audio_chunks, tone, FakeTts, TtsBehaviour};

const WAIT: Duration = Duration::from_secs(10);

fn elevenlabs_settings(fake: &FakeTts) -> ElevenLabsSettings {
    let mut settings = ElevenLabsSettings::new(fake.elevenlabs_key.clone(), "21m00Tcm4TlvDq8ikWAM");
    settings.base_url = fake.base.clone();
    settings
}

fn azure_settings(fake: &FakeTts) -> AzureSettings {
    let mut settings = AzureSettings::new("westeurope", fake.azure_key.clone(), "en-US-AriaNeural");
    settings.base_url = Some(fake.base.clone());
    settings
}

fn rime_settings(fake: &FakeTts) -> RimeSettings {
    let mut settings = RimeSettings::new(fake.rime_key.clone(), "cove");
    settings.base_url = fake.base.clone();
    settings
}

const PLAYHT_VOICE: &str = "s3://voice-cloning-zero-shot/d9ff78ba/original/manifest.json";

fn playht_settings(fake: &FakeTts) -> PlayHtSettings {
    let mut settings = PlayHtSettings::new(fake.playht_key.clone(), fake.playht_user_id.clone(), PLAYHT_VOICE);
    settings.base_url = fake.base.clone();
    settings
}

/// G.711 μ-law of one sample, after the ITU reference (bias 0x84, clip 32635), written apart
/// from the engine's codec.
fn mulaw(sample: i16) -> u8 {
    let (magnitude, mask) = if sample < 0 { (-i32::from(sample), 0x7F) } else { (i32::from(sample), 0xFF) };
    let biased = magnitude.min(32635) + 0x84;
    let segment =
        [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF].iter().position(|&end| biased <= end).unwrap();
    (((segment << 4) as i32 | ((biased >> (segment + 3)) & 0x0F)) ^ mask) as u8
}

/// The fakes' tone as the call should get it: μ-law at 8 kHz for Twilio, the PCM itself at
/// 16 kHz for Vonage.
fn tone_in(encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Mulaw8k => tone(8000).into_iter().map(mulaw).collect(),
        Encoding::Linear16k => tone(16000).into_iter().flat_map(i16::to_le_bytes).collect(),
    }
}

async fn all_of(stream: AudioStream) -> Vec<u8> {
    let chunks: Vec<Vec<u8>> = tokio::time::timeout(WAIT, stream.try_collect()).await.unwrap().unwrap();
    chunks.concat()
}

fn status_of(error: &TtsError) -> (u16, &str) {
    match error {
        TtsError::Status { status, message, .. } => (*status, message),
        other => panic!("not an error status: {other:?}"),
    }
}

#[tokio::test]
async fn elevenlabs_asks_for_the_carriers_format_and_streams_it_back() {
    let fake = FakeTts::start().await;
    let mut settings = elevenlabs_settings(&fake);
    settings.model_id = Some("eleven_turbo_v2_5".into());
    settings.stability = Some(0.35);
    settings.similarity_boost = Some(0.8);
    settings.optimize_streaming_latency = Some(3);
    let voice = ElevenLabs::new(settings);
    assert_eq!(voice.name(), "elevenlabs");

    for (encoding, format) in [(Encoding::Mulaw8k, "ulaw_8000"), (Encoding::Linear16k, "pcm_16000")] {
        let audio = all_of(voice.synthesize("  Hello, how can I help?  ", encoding).await.unwrap()).await;
        assert_eq!(audio, audio_chunks(format).concat(), "{format}");
        let request = fake.requests().pop().unwrap();
        assert_eq!(request.path, "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream");
        assert_eq!(request.param("output_format"), Some(format));
        assert_eq!(request.param("optimize_streaming_latency"), Some("3"));
        assert_eq!(request.headers["xi-api-key"], fake.elevenlabs_key);
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(
            request.json(),
            serde_json::json!({"text": "Hello, how can I help?", "model_id": "eleven_turbo_v2_5",
                               "voice_settings": {"stability": 0.35, "similarity_boost": 0.8}})
        );
    }

    // The defaults: ElevenLabs' low-latency model, no voice settings, no latency level.
    let voice = ElevenLabs::new(elevenlabs_settings(&fake));
    all_of(voice.synthesize("Hi", Encoding::Mulaw8k).await.unwrap()).await;
    let request = fake.requests().pop().unwrap();
    assert_eq!(request.json(), serde_json::json!({"text": "Hi", "model_id": "eleven_flash_v2_5"}));
    assert_eq!(request.query, [("output_format".to_owned(), "ulaw_8000".to_owned())]);
}

#[tokio::test]
async fn azure_sends_ssml_for_either_encoding_and_streams_it_back() {
    let fake = FakeTts::start().await;
    let mut settings = azure_settings(&fake);
    settings.pitch = -5;
    settings.rate = 20;
    let voice = Azure::new(settings);
    assert_eq!(voice.name(), "azure");

    for (encoding, format) in
        [(Encoding::Mulaw8k, "raw-8khz-8bit-mono-mulaw"), (Encoding::Linear16k, "raw-16khz-16bit-mono-pcm")]
    {
        let audio = all_of(voice.synthesize("Hello there.", encoding).await.unwrap()).await;
        assert_eq!(audio, audio_chunks(format).concat(), "{format}");
        let request = fake.requests().pop().unwrap();
        assert_eq!(request.path, "/cognitiveservices/v1");
        assert_eq!(request.headers["ocp-apim-subscription-key"], fake.azure_key);
        assert_eq!(request.headers["content-type"], "application/ssml+xml");
        assert_eq!(request.headers["x-microsoft-outputformat"], format);
        assert!(request.headers["user-agent"].starts_with("vocode-server/"), "{:?}", request.headers);
        assert_eq!(
            request.body,
            "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='en-US'>\
             <voice name='en-US-AriaNeural'><prosody pitch='-5%' rate='+20%'>Hello there.</prosody></voice></speak>"
        );
    }

    // Another language is spoken inside `<lang>`, as vocode does.
    let mut settings = azure_settings(&fake);
    settings.voice_name = "es-ES-ElviraNeural".into();
    settings.language = Some("es-ES".into());
    all_of(Azure::new(settings).synthesize("Hola", Encoding::Mulaw8k).await.unwrap()).await;
    let body = fake.requests().pop().unwrap().body;
    assert!(
        body.contains("xml:lang='es-ES'><voice name='es-ES-ElviraNeural'><lang xml:lang='es-ES'><prosody pitch='+0%' rate='+15%'>Hola</prosody></lang>"),
        "{body}"
    );
}

#[test]
fn the_tests_mulaw_agrees_with_known_values() {
    assert_eq!(
        [mulaw(0), mulaw(-1), mulaw(1000), mulaw(-1000), mulaw(i16::MAX), mulaw(i16::MIN)],
        [0xFF, 0x7F, 0xCE, 0x4E, 0x80, 0x00]
    );
}

#[tokio::test]
async fn rime_asks_for_the_calls_rate_and_gives_the_wavs_samples_in_its_encoding() {
    let fake = FakeTts::start().await;
    let mut settings = rime_settings(&fake);
    settings.model_id = Some("mistv2".into());
    settings.speed_alpha = Some(0.9);
    let voice = Rime::new(settings);
    assert_eq!(voice.name(), "rime");

    for encoding in [Encoding::Mulaw8k, Encoding::Linear16k] {
        let audio = all_of(voice.synthesize("  Hello, how can I help?  ", encoding).await.unwrap()).await;
        assert_eq!(audio.len(), tone_in(encoding).len(), "{encoding:?}");
        assert!(audio == tone_in(encoding), "{encoding:?}: not the WAV's samples");
        let request = fake.requests().pop().unwrap();
        assert_eq!(request.path, "/v1/rime-tts");
        assert_eq!(request.headers["authorization"], format!("Bearer {}", fake.rime_key));
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(
            request.json(),
            serde_json::json!({"text": "Hello, how can I help?", "speaker": "cove", "modelId": "mistv2",
                               "samplingRate": encoding.sample_rate(), "speedAlpha": 0.9})
        );
    }

    // The defaults: Rime's model and speed.
    let voice = Rime::new(rime_settings(&fake));
    all_of(voice.synthesize("Hi", Encoding::Mulaw8k).await.unwrap()).await;
    let request = fake.requests().pop().unwrap();
    assert_eq!(request.json(), serde_json::json!({"text": "Hi", "speaker": "cove", "samplingRate": 8000}));
}

#[tokio::test]
async fn play_ht_streams_the_wavs_samples_in_the_calls_encoding() {
    let fake = FakeTts::start().await;
    let mut settings = playht_settings(&fake);
    settings.speed = Some(1.25);
    settings.quality = Some("premium".into());
    let voice = PlayHt::new(settings);
    assert_eq!(voice.name(), "playht");

    for encoding in [Encoding::Mulaw8k, Encoding::Linear16k] {
        let stream = voice.synthesize("Hello there.", encoding).await.unwrap();
        let chunks: Vec<Vec<u8>> = tokio::time::timeout(WAIT, stream.try_collect()).await.unwrap().unwrap();
        assert!(chunks.len() >= 3, "{encoding:?}: the audio arrives chunk by chunk, got {}", chunks.len());
        assert!(chunks.iter().all(|c| !c.is_empty()));
        let audio = chunks.concat();
        assert_eq!(audio.len(), tone_in(encoding).len(), "{encoding:?}");
        assert!(audio == tone_in(encoding), "{encoding:?}: not the WAV's samples");
        let request = fake.requests().pop().unwrap();
        assert_eq!(request.path, "/api/v2/tts/stream");
        assert_eq!(request.headers["authorization"], fake.playht_key);
        assert_eq!(request.headers["x-user-id"], fake.playht_user_id);
        assert_eq!(request.headers["accept"], "audio/wav");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(
            request.json(),
            serde_json::json!({"text": "Hello there.", "voice": PLAYHT_VOICE, "output_format": "wav",
                               "sample_rate": encoding.sample_rate(), "speed": 1.25, "quality": "premium"})
        );
    }

    // The defaults: Play.ht's speed and quality.
    let voice = PlayHt::new(playht_settings(&fake));
    all_of(voice.synthesize("Hi", Encoding::Linear16k).await.unwrap()).await;
    let request = fake.requests().pop().unwrap();
    assert_eq!(
        request.json(),
        serde_json::json!({"text": "Hi", "voice": PLAYHT_VOICE, "output_format": "wav", "sample_rate": 16000})
    );
}

#[tokio::test]
async fn rime_and_play_ht_errors_carry_the_providers_message_not_the_key() {
    let fake = FakeTts::start().await;

    let mut settings = rime_settings(&fake);
    settings.api_key = "rime-wrong-key".into();
    let error = Rime::new(settings).synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert_eq!(status_of(&error), (401, "Unauthorized: the API key is invalid"));
    assert!(!format!("{error} {error:?}").contains("rime-wrong-key"), "{error:?}");

    let mut settings = playht_settings(&fake);
    settings.api_key = "ph-wrong-key".into();
    let error = PlayHt::new(settings).synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert_eq!(status_of(&error), (401, "Invalid API key or user id"));
    assert!(!format!("{error} {error:?}").contains("ph-wrong-key"), "{error:?}");

    // Providers that echo the key back: it is cut out.
    let rime = Rime::new(rime_settings(&fake));
    fake.plan([TtsBehaviour::Status(500, format!(r#"{{"message":"internal error for {}"}}"#, fake.rime_key))]);
    let error = rime.synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert_eq!(status_of(&error), (500, "internal error for <redacted>"));
    let playht = PlayHt::new(playht_settings(&fake));
    let echo = format!(r#"{{"error_message":"quota exceeded for {}","error_id":"QUOTA"}}"#, fake.playht_key);
    fake.plan([TtsBehaviour::Status(429, echo)]);
    let error = playht.synthesize("Hi", Encoding::Linear16k).await.err().unwrap();
    assert_eq!(status_of(&error), (429, "quota exceeded for <redacted>"));
    assert_eq!(error.to_string(), "playht answered 429: quota exceeded for <redacted>");
}

#[tokio::test]
async fn an_answer_that_is_not_a_wav_file_is_an_audio_error() {
    let fake = FakeTts::start().await;
    let rime = Rime::new(rime_settings(&fake));
    fake.plan([TtsBehaviour::Status(200, r#"{"audioContent":"bm90IGEgd2F2IGZpbGU="}"#.into())]);
    let error = rime.synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert!(
        matches!(&error, TtsError::Audio { provider: "rime", message } if message.contains("not a WAV")),
        "{error}"
    );
    fake.plan([TtsBehaviour::Status(200, r#"{"audio":"elsewhere"}"#.into())]);
    let error = rime.synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert!(matches!(&error, TtsError::Audio { message, .. } if message.contains("no audioContent")), "{error}");

    let playht = PlayHt::new(playht_settings(&fake));
    fake.plan([TtsBehaviour::Status(200, "ID3\u{4}an mp3 after all".into())]);
    let stream = playht.synthesize("Hi", Encoding::Mulaw8k).await.unwrap();
    let error = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>()).await.unwrap().unwrap_err();
    assert!(
        matches!(&error, TtsError::Audio { provider: "playht", message } if message.contains("not a WAV")),
        "{error}"
    );
}

/// The text of the SSML's prosody element, unescaped independently of the code under test.
fn spoken_text(ssml: &str) -> String {
    let start = ssml.find("<prosody").unwrap();
    let start = start + ssml[start..].find('>').unwrap() + 1;
    let end = ssml.find("</prosody>").unwrap();
    let text = &ssml[start..end];
    assert!(!text.contains(['<', '>', '"', '\'']), "unescaped markup in {text:?}");
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

#[tokio::test]
async fn azure_escapes_the_text_it_speaks() {
    let fake = FakeTts::start().await;
    let voice = Azure::new(azure_settings(&fake));
    let text = r#"Fish & chips <b>only</b> at "Bob's" for &lt;5"#;
    all_of(voice.synthesize(text, Encoding::Mulaw8k).await.unwrap()).await;
    let ssml = fake.requests().pop().unwrap().body;
    assert_eq!(spoken_text(&ssml), text);
    assert!(
        ssml.contains("Fish &amp; chips &lt;b&gt;only&lt;/b&gt; at &quot;Bob&apos;s&quot; for &amp;lt;5"),
        "{ssml}"
    );
}

#[tokio::test]
async fn audio_streams_through_as_it_arrives() {
    let fake = FakeTts::start().await;
    let voices: Vec<(Box<dyn Voice>, &str)> = vec![
        (Box::new(ElevenLabs::new(elevenlabs_settings(&fake))), "pcm_16000"),
        (Box::new(Azure::new(azure_settings(&fake))), "raw-16khz-16bit-mono-pcm"),
    ];
    for (voice, format) in voices {
        fake.plan([TtsBehaviour::Gated]);
        let mut stream = voice.synthesize("One moment please.", Encoding::Linear16k).await.unwrap();
        // The first chunk arrives while the provider still holds the rest back.
        let first = tokio::time::timeout(WAIT, stream.try_next()).await.unwrap().unwrap().unwrap();
        let expected = audio_chunks(format);
        assert_eq!(first, expected[0], "{}", voice.name());
        fake.release();
        let rest = all_of(stream).await;
        assert_eq!(rest, expected[1..].concat(), "{}", voice.name());
    }
}

#[tokio::test]
async fn error_statuses_carry_the_providers_message_not_the_key() {
    let fake = FakeTts::start().await;

    let mut settings = elevenlabs_settings(&fake);
    settings.api_key = "xi-wrong-key".into();
    let error = ElevenLabs::new(settings).synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert_eq!(status_of(&error), (401, "Invalid API key"));
    assert!(!format!("{error} {error:?}").contains("xi-wrong-key"), "{error:?}");

    let mut settings = azure_settings(&fake);
    settings.key = "az-wrong-key".into();
    let error = Azure::new(settings).synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    let (status, message) = status_of(&error);
    assert_eq!(status, 401);
    assert!(message.starts_with("Access denied due to invalid subscription key"), "{message}");
    assert!(!format!("{error} {error:?}").contains("az-wrong-key"), "{error:?}");

    // A provider that echoes the key back: it is cut out.
    let elevenlabs = ElevenLabs::new(elevenlabs_settings(&fake));
    let echo =
        format!(r#"{{"detail":{{"status":"server_error","message":"Failed for key {}"}}}}"#, fake.elevenlabs_key);
    fake.plan([TtsBehaviour::Status(500, echo)]);
    let error = elevenlabs.synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert_eq!(status_of(&error), (500, "Failed for key <redacted>"));
    assert!(!error.to_string().contains(&fake.elevenlabs_key), "{error}");

    // An empty error body: the status's reason.
    let azure = Azure::new(azure_settings(&fake));
    fake.plan([TtsBehaviour::Status(503, String::new())]);
    let error = azure.synthesize("Hi", Encoding::Linear16k).await.err().unwrap();
    assert_eq!(status_of(&error), (503, "Service Unavailable"));
    assert_eq!(error.to_string(), "azure answered 503: Service Unavailable");
}

#[tokio::test]
async fn a_provider_that_goes_quiet_times_out() {
    let fake = FakeTts::start().await;
    let mut settings = elevenlabs_settings(&fake);
    settings.timeout = Duration::from_millis(300);
    fake.plan([TtsBehaviour::Hang]);
    let error = ElevenLabs::new(settings).synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert!(matches!(error, TtsError::Timeout { provider: "elevenlabs", .. }), "{error:?}");

    // Nothing listening at all is a transport error.
    let mut settings = azure_settings(&fake);
    settings.base_url = Some("http://127.0.0.1:9".into());
    let error = Azure::new(settings).synthesize("Hi", Encoding::Mulaw8k).await.err().unwrap();
    assert!(matches!(error, TtsError::Transport { provider: "azure", .. }), "{error:?}");
}

#[tokio::test]
async fn blank_text_asks_nothing_of_the_provider() {
    let fake = FakeTts::start().await;
    let voices: Vec<Box<dyn Voice>> = vec![
        Box::new(ElevenLabs::new(elevenlabs_settings(&fake))),
        Box::new(Azure::new(azure_settings(&fake))),
        Box::new(Rime::new(rime_settings(&fake))),
        Box::new(PlayHt::new(playht_settings(&fake))),
    ];
    for voice in voices {
        let audio = all_of(voice.synthesize("  \n", Encoding::Mulaw8k).await.unwrap()).await;
        assert!(audio.is_empty(), "{}", voice.name());
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}
