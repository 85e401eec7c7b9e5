//! An agent, as the engine runs it: its documents (as stored, secrets in the clear) and the
//! server's provider settings resolved into the engine's configuration and providers. The
//! agent's own objects come first — its voice's `api_key`, its `openai_account_connection` —
//! and the server's settings second. What cannot be resolved is named, so that `calls/create`
//! can refuse a call that would be deaf or mute and say what to configure.
//!
//! On the sandbox carrier's simulated calls, and only there, stand-ins take the place of what
//! the server has not configured ([`Fallbacks`]): the sandbox's speech-to-text, the scripted
//! model and the tone voice. Each says so in the log, once per call.
//!
//! The server's own speech ([`LocalSpeech`]), when installed, is a real provider for every call:
//! the local recogniser when no `DEEPGRAM_API_KEY` is set, the flite voice for `voice_vocode` when
//! `VOCODE_VOICE` names no cloud voice (and for any voice that cannot be used here, when the
//! operator allows it with `LOCAL_VOICE_FALLBACK`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::actions::{Action, NoRunner};
use super::engine::{EngineConfig, Providers, TurnModels};
use super::knowledge::{Knowledge, Pinecone};
use super::line::Line;
use super::llm::openai::{OpenAiCompatible, OpenAiSettings};
use super::llm::scripted::Scripted;
use super::llm::{ChatRequest, DeltaStream, Fallback, LanguageModel, LlmError};
use super::local::{LocalSpeech, INSTALL};
use super::settings::ProviderSettings;
use super::stt::deepgram::{Deepgram, DeepgramSettings};
use super::stt::local::LocalStt;
use super::stt::sandbox::{SandboxStt, SpokenLog};
use super::tts::azure::{Azure, AzureSettings};
use super::tts::elevenlabs::{ElevenLabs, ElevenLabsSettings};
use super::tts::flite::{self, Flite};
use super::tts::playht::{PlayHt, PlayHtSettings};
use super::tts::rime::{Rime, RimeSettings};
use super::tts::tone::Tone;
use super::tts::Voice;
use super::turns::Dials;

/// An agent's documents, as stored (secrets in the clear).
#[derive(Debug, Clone, Default)]
pub struct AgentDocuments {
    /// The agent (`AgentParams`, references as ids).
    pub agent: Value,
    /// Its prompt's content.
    pub prompt: String,
    /// Its voice.
    pub voice: Option<Value>,
    /// The key of its `openai_account_connection`.
    pub openai_key: Option<String>,
    /// Its actions (`{"type", "config", "action_trigger"}`, secrets in the clear).
    pub actions: Vec<Value>,
    /// Its vector database (`api_key` in the clear).
    pub vector_database: Option<Value>,
}

/// What a call's agent lacks to listen, think or speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Missing(pub String);

/// What may stand in for a provider the server lacks. Only the sandbox carrier's simulated calls
/// have any: a real call is never heard, answered or voiced by a stand-in.
#[derive(Clone, Default)]
pub struct Fallbacks {
    /// The call is one of the sandbox's: its simulated person's side channel, which the sandbox's
    /// speech-to-text reads (the scripted model and the tone voice need nothing).
    pub sandbox: Option<SpokenLog>,
}

impl Fallbacks {
    /// No stand-ins: every provider must be configured.
    pub fn none() -> Self {
        Fallbacks::default()
    }

    /// A sandbox call's stand-ins.
    pub fn sandbox(spoken: SpokenLog) -> Self {
        Fallbacks { sandbox: Some(spoken) }
    }
}

/// The engine's configuration and providers for a call's agent.
pub fn resolve(
    docs: &AgentDocuments,
    settings: &ProviderSettings,
    speech: &Arc<LocalSpeech>,
    line: Line,
) -> Result<(EngineConfig, Providers), Missing> {
    resolve_with(docs, settings, speech, line, &Fallbacks::none())
}

/// [`resolve`], with stand-ins for what cannot be resolved (logged, once each).
pub fn resolve_with(
    docs: &AgentDocuments,
    settings: &ProviderSettings,
    speech: &Arc<LocalSpeech>,
    line: Line,
    fallbacks: &Fallbacks,
) -> Result<(EngineConfig, Providers), Missing> {
    let agent = &docs.agent;
    let stand_in = |missing: &Missing, what: &str| {
        tracing::info!(%missing, "this sandbox call uses a stand-in {what}: configure a real one to hear it");
    };
    // A sped-up sandbox squeezes its person's audio, which no recogniser could hear: it keeps its
    // stand-in then.
    let sped_up = fallbacks.sandbox.as_ref().is_some_and(|spoken| spoken.time_scale() != 1.0);
    let local = (!sped_up).then_some(speech);
    let stt = match (speech_to_text(settings, local), &fallbacks.sandbox) {
        (Err(missing), Some(spoken)) => {
            stand_in(&missing, "speech-to-text (it reads what the simulated person says)");
            Arc::new(SandboxStt::new(spoken.clone()))
        }
        (stt, _) => stt?,
    };
    let llm = match model(docs, settings) {
        Err(missing) if fallbacks.sandbox.is_some() => {
            stand_in(&missing, "language model (scripted replies)");
            Arc::new(Scripted::new())
        }
        llm => llm?,
    };
    let voice: Arc<dyn Voice> = match voice(docs, settings, speech) {
        Err(missing) if settings.local_voice_fallback && speech.flite().is_some() => {
            tracing::info!(%missing, "the call speaks with the local flite voice instead (LOCAL_VOICE_FALLBACK)");
            let program = speech.flite().expect("guarded");
            Arc::new(Flite::new(program, flite::DEFAULT_VOICE).expect("a flite voice"))
        }
        Err(missing) if fallbacks.sandbox.is_some() => {
            stand_in(&missing, "voice (a synthetic tone as long as the words)");
            Arc::new(Tone)
        }
        voice => voice?,
    };
    // The call's edge gives its own runner (it knows the call); until then no action reaches out.
    let turn_models = TurnModels::new(speech.clone(), settings.silero_vad, settings.end_of_turn_model);
    let providers =
        Providers { stt, llm, voice, actions: Arc::new(NoRunner), knowledge: knowledge(docs, settings), turn_models };
    let keywords = agent["deepgram_keywords"]
        .as_object()
        .map(|words| words.iter().map(|(word, boost)| format!("{word}:{}", boost.as_f64().unwrap_or(1.0))).collect())
        .unwrap_or_default();
    let config = EngineConfig {
        noise_suppression: agent["noise_suppression"].as_bool().unwrap_or(false),
        line,
        dials: Dials::from_agent(agent),
        prompt: docs.prompt.clone(),
        initial_message: agent["initial_message"].as_str().filter(|m| !m.trim().is_empty()).map(str::to_owned),
        model: model_name(docs, settings),
        temperature: agent["llm_temperature"].as_f64().map(|t| t as f32),
        language: agent["language"].as_str().map(str::to_owned),
        keywords,
        actions: actions(docs),
    };
    Ok((config, providers))
}

/// Deepgram when configured, else the local recogniser when installed (and wanted).
fn speech_to_text(
    settings: &ProviderSettings,
    speech: Option<&Arc<LocalSpeech>>,
) -> Result<Arc<dyn super::stt::SpeechToText>, Missing> {
    let Some(key) = settings.deepgram_api_key.clone() else {
        if let Some(speech) = speech.filter(|s| s.recognizer_available()) {
            return Ok(Arc::new(LocalStt::new(speech.clone())));
        }
        return Err(Missing(format!(
            "the agent cannot hear: set DEEPGRAM_API_KEY (speech-to-text), or install the local recogniser with {INSTALL}"
        )));
    };
    let mut deepgram = DeepgramSettings::new(key);
    if let Some(url) = &settings.deepgram_url {
        deepgram.url = url.clone();
    }
    Ok(Arc::new(Deepgram::new(deepgram)))
}

fn openai(settings: &ProviderSettings, key: Option<String>) -> Result<OpenAiCompatible, Missing> {
    let base_url = settings.openai_base_url.clone().unwrap_or_else(|| super::llm::openai::DEFAULT_BASE_URL.into());
    let official = base_url.trim_end_matches('/') == super::llm::openai::DEFAULT_BASE_URL;
    if key.is_none() && official {
        return Err(Missing(
            "the agent cannot think: give it an openai_account_connection, or set OPENAI_API_KEY \
             (or OPENAI_BASE_URL for a server that needs no key)"
                .into(),
        ));
    }
    Ok(OpenAiCompatible::new(OpenAiSettings { base_url, api_key: key, ..OpenAiSettings::default() }))
}

/// The agent's `vector_database`, its words embedded through the same OpenAI-compatible server
/// and key as its model. One that cannot be consulted is logged, and the call goes on without it.
fn knowledge(docs: &AgentDocuments, settings: &ProviderSettings) -> Option<Arc<dyn Knowledge>> {
    let document = docs.vector_database.as_ref()?;
    let not_consulted = |reason: &str| {
        tracing::warn!(%reason, "the agent's vector database is not consulted on this call");
        None
    };
    if document["type"] != "vector_database_pinecone" {
        return not_consulted(&format!("{} is not supported", document["type"]));
    }
    let key = docs.openai_key.clone().or_else(|| settings.openai_api_key.clone());
    let base_url = settings.openai_base_url.clone().unwrap_or_else(|| super::llm::openai::DEFAULT_BASE_URL.into());
    if key.is_none() && base_url.trim_end_matches('/') == super::llm::openai::DEFAULT_BASE_URL {
        return not_consulted("embeddings need an openai_account_connection or OPENAI_API_KEY");
    }
    match Pinecone::from_document(document, settings.pinecone_base_url.as_deref(), &base_url, key) {
        Ok(index) => Some(Arc::new(index)),
        Err(reason) => not_consulted(&format!("its Pinecone index cannot be queried: {reason}")),
    }
}

/// The agent's actions; an agent that navigates phone menus (`ivr_navigation_mode: default`)
/// can always press keys.
fn actions(docs: &AgentDocuments) -> Vec<Action> {
    let mut actions: Vec<Action> = docs.actions.iter().filter_map(Action::from_document).collect();
    let navigates = docs.agent["ivr_navigation_mode"].as_str() == Some("default");
    if navigates && !actions.iter().any(|a| a.tool().is_some_and(|t| t.name == super::actions::DTMF)) {
        actions.extend(Action::from_document(&serde_json::json!({"type": super::actions::DTMF})));
    }
    actions
}

/// The model the agent names (`openai_model_name_override`), else the server's `OPENAI_MODEL`.
pub fn model_name(docs: &AgentDocuments, settings: &ProviderSettings) -> String {
    docs.agent["openai_model_name_override"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or(&settings.openai_model)
        .to_owned()
}

/// The agent's language model: through its `openai_account_connection`'s key first, else the
/// server's; with its `llm_fallback` behind it when it has one.
pub fn model(docs: &AgentDocuments, settings: &ProviderSettings) -> Result<Arc<dyn LanguageModel>, Missing> {
    let key = docs.openai_key.clone().or_else(|| settings.openai_api_key.clone());
    let primary: Arc<dyn LanguageModel> = Arc::new(openai(settings, key.clone())?);
    let fallback = &docs.agent["llm_fallback"];
    let Some(model_name) = fallback["model_name"].as_str() else {
        return Ok(primary);
    };
    // Azure-compatible gateways speak the same protocol at OPENAI_BASE_URL.
    let secondary = WithModel { inner: Arc::new(openai(settings, key)?), model: model_name.to_owned() };
    Ok(Arc::new(Fallback { primary, secondary: Arc::new(secondary), first_token_timeout: Duration::from_secs(4) }))
}

/// A model that answers with another model name than the request's (the agent's fallback).
struct WithModel {
    inner: Arc<dyn LanguageModel>,
    model: String,
}

impl LanguageModel for WithModel {
    fn stream(&self, mut request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>> {
        request.model = self.model.clone();
        self.inner.stream(request)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

fn voice(docs: &AgentDocuments, settings: &ProviderSettings, speech: &LocalSpeech) -> Result<Arc<dyn Voice>, Missing> {
    let voice = docs.voice.clone().unwrap_or_else(crate::domain::agents::default_voice);
    match voice["type"].as_str().unwrap_or_default() {
        "voice_eleven_labs" => {
            let key = voice["api_key"].as_str().map(str::to_owned).or_else(|| settings.elevenlabs_api_key.clone());
            let Some(key) = key else {
                return Err(Missing(
                    "the agent cannot speak: its voice_eleven_labs has no api_key; set ELEVENLABS_API_KEY".into(),
                ));
            };
            let mut eleven = ElevenLabsSettings::new(key, voice["voice_id"].as_str().unwrap_or_default());
            if let Some(base) = &settings.elevenlabs_base_url {
                eleven.base_url = base.clone();
            }
            eleven.model_id = voice["model_id"].as_str().map(str::to_owned);
            eleven.stability = voice["stability"].as_f64().map(|v| v as f32);
            eleven.similarity_boost = voice["similarity_boost"].as_f64().map(|v| v as f32);
            eleven.optimize_streaming_latency = voice["optimize_streaming_latency"].as_u64().map(|v| v.min(4) as u8);
            eleven.language_code = docs.agent["language"].as_str().map(str::to_owned);
            Ok(Arc::new(ElevenLabs::new(eleven)))
        }
        "voice_azure" => {
            let name = voice["voice_name"].as_str().unwrap_or_default();
            let mut azure = azure(settings, name)?;
            azure.pitch = voice["pitch"].as_i64().unwrap_or(0) as i32;
            azure.rate = voice["rate"].as_i64().unwrap_or(15) as i32;
            azure.language = docs.agent["language"].as_str().and_then(azure_locale).map(str::to_owned);
            Ok(Arc::new(Azure::new(azure)))
        }
        "voice_rime" => {
            let Some(key) = settings.rime_api_key.clone() else {
                return Err(Missing("the agent cannot speak: its voice is voice_rime; set RIME_API_KEY".into()));
            };
            let mut rime = RimeSettings::new(key, voice["speaker"].as_str().unwrap_or_default());
            if let Some(base) = &settings.rime_base_url {
                rime.base_url = base.clone();
            }
            rime.model_id = voice["model_id"].as_str().map(str::to_owned);
            rime.speed_alpha = voice["speed_alpha"].as_f64().map(|v| v as f32);
            Ok(Arc::new(Rime::new(rime)))
        }
        "voice_play_ht" => {
            let own = |field: &str| voice[field].as_str().filter(|v| !v.is_empty()).map(str::to_owned);
            let key = own("api_key").or_else(|| settings.playht_api_key.clone());
            let user_id = own("api_user_id").or_else(|| settings.playht_user_id.clone());
            let (Some(key), Some(user_id)) = (key, user_id) else {
                return Err(Missing(
                    "the agent cannot speak: its voice_play_ht needs an api_key and an api_user_id; set \
                     PLAYHT_API_KEY and PLAYHT_USER_ID"
                        .into(),
                ));
            };
            let mut playht = PlayHtSettings::new(key, user_id, voice["voice_id"].as_str().unwrap_or_default());
            if let Some(base) = &settings.playht_base_url {
                playht.base_url = base.clone();
            }
            playht.speed = voice["speed"].as_f64().map(|v| v as f32);
            playht.quality = voice["quality"].as_str().map(str::to_owned);
            Ok(Arc::new(PlayHt::new(playht)))
        }
        "voice_vocode" => match settings.vocode_voice.as_deref().and_then(|v| v.split_once(':')) {
            Some(("elevenlabs", id)) => {
                let Some(key) = settings.elevenlabs_api_key.clone() else {
                    return Err(Missing("VOCODE_VOICE names an ElevenLabs voice: set ELEVENLABS_API_KEY".into()));
                };
                let mut eleven = ElevenLabsSettings::new(key, id);
                if let Some(base) = &settings.elevenlabs_base_url {
                    eleven.base_url = base.clone();
                }
                Ok(Arc::new(ElevenLabs::new(eleven)))
            }
            Some(("azure", name)) => Ok(Arc::new(Azure::new(azure(settings, name)?))),
            _ => match speech.flite() {
                Some(program) => {
                    let name = flite::voice_for(voice["voice_id"].as_str());
                    Ok(Arc::new(Flite::new(program, name).expect("a flite voice")))
                }
                None => Err(Missing(format!(
                    "the agent cannot speak: its voice is voice_vocode; set VOCODE_VOICE to elevenlabs:VOICE_ID or \
                     azure:VOICE_NAME, or install the local voice with {INSTALL}"
                ))),
            },
        },
        other => Err(Missing(format!(
            "the agent cannot speak: {other} voices are not supported by this server; use voice_eleven_labs, \
             voice_azure, voice_rime, voice_play_ht or voice_vocode"
        ))),
    }
}

/// The locale Azure speaks an agent's `language` in.
fn azure_locale(language: &str) -> Option<&'static str> {
    Some(match language {
        "en" => "en-US",
        "es" => "es-ES",
        "de" => "de-DE",
        "hi" => "hi-IN",
        "pt" => "pt-BR",
        "fr" => "fr-FR",
        "nl" => "nl-NL",
        "id" => "id-ID",
        "it" => "it-IT",
        "ja" => "ja-JP",
        "ko" => "ko-KR",
        _ => return None,
    })
}

fn azure(settings: &ProviderSettings, voice_name: &str) -> Result<AzureSettings, Missing> {
    let (Some(key), region) = (settings.azure_speech_key.clone(), settings.azure_speech_region.clone()) else {
        return Err(Missing("the agent cannot speak: its voice is Azure's; set AZURE_SPEECH_KEY".into()));
    };
    if region.is_none() && settings.azure_speech_base_url.is_none() {
        return Err(Missing("the agent cannot speak: set AZURE_SPEECH_REGION (or AZURE_SPEECH_BASE_URL)".into()));
    }
    let mut azure = AzureSettings::new(region.unwrap_or_default(), key, voice_name);
    azure.base_url = settings.azure_speech_base_url.clone();
    Ok(azure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> ProviderSettings {
        ProviderSettings {
            deepgram_api_key: Some("dg".into()),
            openai_api_key: Some("sk".into()),
            vocode_voice: Some("elevenlabs:abc".into()),
            elevenlabs_api_key: Some("el".into()),
            ..ProviderSettings::default()
        }
    }

    fn no_local() -> Arc<LocalSpeech> {
        Arc::new(LocalSpeech::none())
    }

    fn docs(agent: Value, voice: Option<Value>) -> AgentDocuments {
        AgentDocuments { agent, prompt: "Be brief.".into(), voice, ..AgentDocuments::default() }
    }

    #[test]
    fn an_agent_that_navigates_phone_menus_can_press_keys() {
        let navigating =
            resolve(&docs(json!({"ivr_navigation_mode": "default"}), None), &settings(), &no_local(), Line::TWILIO);
        let tools: Vec<String> =
            navigating.unwrap().0.actions.iter().filter_map(|a| a.tool()).map(|t| t.name).collect();
        assert_eq!(tools, ["action_dtmf"]);
        let mut with_keys = docs(json!({"ivr_navigation_mode": "default"}), None);
        with_keys.actions = vec![json!({"type": "action_dtmf"})];
        let (config, _) = resolve(&with_keys, &settings(), &no_local(), Line::TWILIO).unwrap();
        assert_eq!(config.actions.len(), 1, "offered once");
        let (config, _) = resolve(&docs(json!({}), None), &settings(), &no_local(), Line::TWILIO).unwrap();
        assert!(config.actions.is_empty(), "not without IVR navigation");
    }

    #[test]
    fn an_agent_with_everything_configured_resolves() {
        let agent = json!({"initial_message": "Hi!", "openai_model_name_override": "gpt-4o", "llm_temperature": 0.5,
                           "deepgram_keywords": {"Ajay": 2}, "language": "en", "interrupt_sensitivity": "high"});
        let (config, providers) = resolve(&docs(agent, None), &settings(), &no_local(), Line::TWILIO).unwrap();
        assert_eq!(config.initial_message.as_deref(), Some("Hi!"));
        assert_eq!((config.model.as_str(), config.temperature), ("gpt-4o", Some(0.5)));
        assert_eq!(config.keywords, vec!["Ajay:2".to_owned()]);
        assert_eq!(config.prompt, "Be brief.");
        assert_eq!(config.dials.interrupt, super::super::turns::InterruptSensitivity::High);
        assert_eq!(providers.stt.name(), "deepgram");
        assert!(config.actions.is_empty());
        let defaults = resolve(&docs(json!({}), None), &settings(), &no_local(), Line::VONAGE).unwrap().0;
        assert_eq!(defaults.model, "gpt-4o-mini");
    }

    #[test]
    fn a_vector_database_is_consulted_when_its_words_can_be_embedded() {
        let pinecone =
            json!({"type": "vector_database_pinecone", "index": "docs", "api_key": "pc", "api_environment": "gcp"});
        let with = |vector_database: Option<Value>, s: &ProviderSettings| {
            let docs = AgentDocuments { vector_database, ..docs(json!({}), None) };
            resolve(&docs, s, &no_local(), Line::TWILIO).unwrap().1.knowledge.is_some()
        };
        assert!(with(Some(pinecone.clone()), &settings()));
        assert!(!with(None, &settings()));
        assert!(!with(Some(json!({"type": "vector_database_other"})), &settings()));
        let local_model = ProviderSettings {
            openai_api_key: None,
            openai_base_url: Some("http://127.0.0.1:11434/v1".into()),
            ..settings()
        };
        assert!(with(Some(pinecone), &local_model), "a local server embeds without a key");
    }

    #[test]
    fn the_agents_language_reaches_azure_as_a_locale() {
        assert_eq!(azure_locale("es"), Some("es-ES"));
        assert_eq!(azure_locale("xx"), None);
    }

    #[test]
    fn what_is_missing_is_named() {
        let none = ProviderSettings::default();
        let err = |s: &ProviderSettings, voice: Option<Value>| {
            resolve(&docs(json!({}), voice), s, &no_local(), Line::TWILIO).err().map(|m| m.0).unwrap_or_default()
        };
        assert!(err(&none, None).contains("DEEPGRAM_API_KEY"));
        let mut s = ProviderSettings { deepgram_api_key: Some("dg".into()), ..ProviderSettings::default() };
        assert!(err(&s, None).contains("OPENAI_API_KEY"));
        s.openai_base_url = Some("http://127.0.0.1:11434/v1".into());
        assert!(err(&s, None).contains("VOCODE_VOICE"), "a local model needs no key");
        assert!(err(&s, Some(json!({"type": "voice_eleven_labs", "voice_id": "x"}))).contains("ELEVENLABS_API_KEY"));
        assert!(err(&s, Some(json!({"type": "voice_azure", "voice_name": "x"}))).contains("AZURE_SPEECH_KEY"));
        assert!(err(&s, Some(json!({"type": "voice_rime", "speaker": "x"}))).contains("RIME_API_KEY"));
        let play_ht = json!({"type": "voice_play_ht", "voice_id": "x"});
        let message = err(&s, Some(play_ht.clone()));
        assert!(message.contains("PLAYHT_API_KEY") && message.contains("PLAYHT_USER_ID"), "{message}");
        let own_key_only = json!({"type": "voice_play_ht", "voice_id": "x", "api_key": "mine"});
        assert!(err(&s, Some(own_key_only)).contains("PLAYHT_USER_ID"), "the user id is needed too");
        assert!(err(&s, Some(json!({"type": "voice_gtts"}))).contains("not supported"));
        let own_key = json!({"type": "voice_eleven_labs", "voice_id": "x", "api_key": "mine"});
        assert_eq!(err(&s, Some(own_key)), "", "the voice's own key is enough");
        let own_keys = json!({"type": "voice_play_ht", "voice_id": "x", "api_key": "mine", "api_user_id": "me"});
        assert_eq!(err(&s, Some(own_keys)), "", "the voice's own key and user id are enough");
        s.rime_api_key = Some("rk".into());
        s.playht_api_key = Some("pk".into());
        s.playht_user_id = Some("pu".into());
        assert_eq!(err(&s, Some(json!({"type": "voice_rime", "speaker": "x"}))), "");
        assert_eq!(err(&s, Some(play_ht)), "", "the server's Play.ht account");
    }

    #[test]
    fn the_local_speech_is_used_when_installed_and_no_cloud_speech_is_configured() {
        let installed =
            Arc::new(LocalSpeech::assumed(std::path::Path::new("/speech"), Some("/usr/bin/flite".as_ref())));
        let none = ProviderSettings { openai_base_url: Some("http://127.0.0.1:11434/v1".into()), ..Default::default() };
        let joe = Some(json!({"type": "voice_vocode", "voice_id": "joe"}));
        let resolved = |s: &ProviderSettings, voice: Option<Value>, fallbacks: &Fallbacks| {
            resolve_with(&docs(json!({}), voice), s, &installed, Line::TWILIO, fallbacks)
        };
        let (_, providers) = resolved(&none, joe.clone(), &Fallbacks::none()).unwrap();
        assert_eq!((providers.stt.name(), providers.voice.name()), ("moonshine", "flite"), "a real call, all local");
        let (_, providers) = resolved(&settings(), joe.clone(), &Fallbacks::none()).unwrap();
        assert_eq!((providers.stt.name(), providers.voice.name()), ("deepgram", "elevenlabs"), "the cloud first");
        // A sandbox call in a sped-up world keeps its stand-in: its person's audio is squeezed.
        let sped_up = Fallbacks::sandbox(SpokenLog::new(0.1));
        assert_eq!(resolved(&none, joe.clone(), &sped_up).unwrap().1.stt.name(), "sandbox");
        let real_time = Fallbacks::sandbox(SpokenLog::new(1.0));
        assert_eq!(resolved(&none, joe, &real_time).unwrap().1.stt.name(), "moonshine");
        // A cloud voice without its key: refused, unless the operator allows the local fallback.
        let rime = Some(json!({"type": "voice_rime", "speaker": "x"}));
        assert!(resolved(&none, rime.clone(), &Fallbacks::none()).is_err());
        let fallback = ProviderSettings { local_voice_fallback: true, ..none.clone() };
        assert_eq!(resolved(&fallback, rime, &Fallbacks::none()).unwrap().1.voice.name(), "flite");
        // Nothing installed: the messages say how to install it.
        let message = resolve(&docs(json!({}), None), &none, &no_local(), Line::TWILIO).err().unwrap().0;
        assert!(message.contains("DEEPGRAM_API_KEY") && message.contains(INSTALL), "{message}");
    }

    #[test]
    fn stand_ins_fill_in_only_for_sandbox_calls_and_only_what_is_missing() {
        let none = ProviderSettings::default();
        let no_speech = no_local();
        let sandbox = Fallbacks::sandbox(SpokenLog::new(1.0));
        let (_, providers) = resolve_with(&docs(json!({}), None), &none, &no_speech, Line::TWILIO, &sandbox).unwrap();
        let names = (providers.stt.name(), providers.llm.name(), providers.voice.name());
        assert_eq!(names, ("sandbox", "scripted", "tone"));
        let (_, providers) =
            resolve_with(&docs(json!({}), None), &settings(), &no_local(), Line::TWILIO, &sandbox).unwrap();
        assert_eq!(providers.stt.name(), "deepgram", "a configured provider is used even on a sandbox call");
        assert_eq!(providers.voice.name(), "elevenlabs");
        let real_call = resolve_with(&docs(json!({}), None), &none, &no_speech, Line::TWILIO, &Fallbacks::none());
        assert!(real_call.is_err(), "no stand-in for a real call");
    }
}
