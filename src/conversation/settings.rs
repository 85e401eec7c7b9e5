//! The server's provider settings, as the conversation reads them: the keys and endpoints of the
//! speech-to-text, model and voice providers that an agent's own objects do not name. The
//! command line fills them in (`config::ConversationArgs::providers`); the engine never sees the
//! command line, so a setting that is not about providers never reaches it.

/// The model an agent uses when it names none and the operator set no `OPENAI_MODEL`.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// The server's defaults for the providers agents listen, think and speak with. An agent's own
/// objects come first (its voice's `api_key`, its `openai_account_connection`).
#[derive(Clone)]
pub struct ProviderSettings {
    /// Deepgram's key (`DEEPGRAM_API_KEY`): without it, the local recogniser if installed.
    pub deepgram_api_key: Option<String>,
    /// Deepgram's live-streaming endpoint, instead of Deepgram's own.
    pub deepgram_url: Option<String>,
    /// The OpenAI-compatible model server's key (`OPENAI_API_KEY`).
    pub openai_api_key: Option<String>,
    /// The OpenAI-compatible chat-completions API, instead of OpenAI's (`OPENAI_BASE_URL`).
    pub openai_base_url: Option<String>,
    /// The model of agents that name none (`OPENAI_MODEL`).
    pub openai_model: String,
    /// ElevenLabs' key, for `voice_eleven_labs` voices that carry none (`ELEVENLABS_API_KEY`).
    pub elevenlabs_api_key: Option<String>,
    pub elevenlabs_base_url: Option<String>,
    /// Azure Speech's key, region and endpoint (`AZURE_SPEECH_KEY`, `AZURE_SPEECH_REGION`,
    /// `AZURE_SPEECH_BASE_URL`).
    pub azure_speech_key: Option<String>,
    pub azure_speech_region: Option<String>,
    pub azure_speech_base_url: Option<String>,
    /// Rime's key (`RIME_API_KEY`) and API.
    pub rime_api_key: Option<String>,
    pub rime_base_url: Option<String>,
    /// Play.ht's key and user id, for `voice_play_ht` voices that carry none (`PLAYHT_API_KEY`,
    /// `PLAYHT_USER_ID`), and its API.
    pub playht_api_key: Option<String>,
    pub playht_user_id: Option<String>,
    pub playht_base_url: Option<String>,
    /// Where agents' Pinecone indexes are queried, instead of each index's own host.
    pub pinecone_base_url: Option<String>,
    /// The voice `voice_vocode` voices speak with (`VOCODE_VOICE`: `elevenlabs:VOICE_ID` or
    /// `azure:VOICE_NAME`).
    pub vocode_voice: Option<String>,
    /// A cloud voice that cannot be used here speaks with the local flite voice instead of the
    /// call being refused (`LOCAL_VOICE_FALLBACK`).
    pub local_voice_fallback: bool,
    /// Calls hear the caller's voice with the neural detector when it is installed (`VAD=silero`),
    /// else by loudness.
    pub silero_vad: bool,
    /// The end-of-turn model judges the caller's pauses when it is installed
    /// (`END_OF_TURN_MODEL=on`), else the silence rule ends turns.
    pub end_of_turn_model: bool,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            deepgram_api_key: None,
            deepgram_url: None,
            openai_api_key: None,
            openai_base_url: None,
            openai_model: DEFAULT_MODEL.into(),
            elevenlabs_api_key: None,
            elevenlabs_base_url: None,
            azure_speech_key: None,
            azure_speech_region: None,
            azure_speech_base_url: None,
            rime_api_key: None,
            rime_base_url: None,
            playht_api_key: None,
            playht_user_id: None,
            playht_base_url: None,
            pinecone_base_url: None,
            vocode_voice: None,
            local_voice_fallback: false,
            silero_vad: true,
            end_of_turn_model: true,
        }
    }
}
