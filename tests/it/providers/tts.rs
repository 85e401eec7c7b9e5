//! ElevenLabs and Azure Speech against fakes of both: the request each voice sends for either
//! encoding, audio streamed through as it arrives, and errors that say what the provider said
//! without showing the key.

use std::time::Duration;

use futures_util::TryStreamExt;
use vocode_server::conversation::audio::Encoding;
use vocode_server::conversation::tts::{
    AudioStream, Azure, AzureSettings, ElevenLabs, ElevenLabsSettings, TtsError, Voice,
};

use crate::support::fake_tts::{audio_chunks, FakeTts, TtsBehaviour};

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
    let voices: Vec<Box<dyn Voice>> =
        vec![Box::new(ElevenLabs::new(elevenlabs_settings(&fake))), Box::new(Azure::new(azure_settings(&fake)))];
    for voice in voices {
        let audio = all_of(voice.synthesize("  \n", Encoding::Mulaw8k).await.unwrap()).await;
        assert!(audio.is_empty(), "{}", voice.name());
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}
