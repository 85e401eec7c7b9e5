//! The resources whose fields the server stores as validated documents — prompts, voices,
//! webhooks, vector databases, account connections, actions — and the rules they share: which
//! fields are secrets (sealed at rest, masked when shown), how an update applies to a document,
//! and how a document is shown.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::crypto::{mask, SecretBox};

/// The tables documents are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    PromptTemplates,
    Prompts,
    Voices,
    Webhooks,
    VectorDatabases,
    AccountConnections,
    Actions,
    Agents,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::PromptTemplates => "prompt_templates",
            Table::Prompts => "prompts",
            Table::Voices => "voices",
            Table::Webhooks => "webhooks",
            Table::VectorDatabases => "vector_databases",
            Table::AccountConnections => "account_connections",
            Table::Actions => "actions",
            Table::Agents => "agents",
        }
    }
}

/// What the API calls a resource, and how it is stored and validated.
#[derive(Debug)]
pub struct Resource {
    pub table: Table,
    /// The path segment under `/v1/`.
    pub path: &'static str,
    /// The noun in messages ("Voice not found").
    pub noun: &'static str,
    /// The schema a complete document satisfies (the create operation's body).
    pub params_schema: &'static str,
    /// Whether documents are a union discriminated by `type`.
    pub discriminated: bool,
}

pub static PROMPTS: Resource = Resource {
    table: Table::Prompts,
    path: "prompts",
    noun: "Prompt",
    params_schema: "PromptParams",
    discriminated: false,
};
pub static VOICES: Resource = Resource {
    table: Table::Voices,
    path: "voices",
    noun: "Voice",
    params_schema: "VoiceParamsRequest",
    discriminated: true,
};
pub static WEBHOOKS: Resource = Resource {
    table: Table::Webhooks,
    path: "webhooks",
    noun: "Webhook",
    params_schema: "WebhookParams",
    discriminated: false,
};
pub static VECTOR_DATABASES: Resource = Resource {
    table: Table::VectorDatabases,
    path: "vector_databases",
    noun: "Vector database",
    params_schema: "PineconeVectorDatabaseParams",
    discriminated: true,
};
pub static ACCOUNT_CONNECTIONS: Resource = Resource {
    table: Table::AccountConnections,
    path: "account_connections",
    noun: "Account connection",
    params_schema: "AccountConnectionParamsRequest",
    discriminated: true,
};
pub static ACTIONS: Resource = Resource {
    table: Table::Actions,
    path: "actions",
    noun: "Action",
    params_schema: "ActionParamsRequest",
    discriminated: true,
};
pub static AGENTS: Resource = Resource {
    table: Table::Agents,
    path: "agents",
    noun: "Agent",
    params_schema: "AgentParams",
    discriminated: false,
};
pub static PROMPT_TEMPLATES: Resource = Resource {
    table: Table::PromptTemplates,
    path: "prompt_templates",
    noun: "Prompt template",
    params_schema: "PromptTemplate",
    discriminated: false,
};

/// The columns a list of these resources may be sorted by.
pub const SORT_COLUMNS: &[&str] = &["created_at", "updated_at", "id"];

impl Resource {
    /// The `kind` column: the document's `type`, or the resource's name.
    pub fn kind_of(&self, body: &Value) -> String {
        if self.discriminated {
            body["type"].as_str().unwrap_or_default().to_owned()
        } else {
            self.path.to_owned()
        }
    }

    pub fn not_found(&self, id: Uuid) -> String {
        format!("{} {id} not found", self.noun)
    }
}

/// The kind of a Twilio account connection (the only kind that places calls).
pub const TWILIO_ACCOUNT_CONNECTION: &str = "account_connection_twilio";
/// The kind of an OpenAI account connection (an agent's model key).
pub const OPENAI_ACCOUNT_CONNECTION: &str = "account_connection_openai";
/// The kind of an action that calls the user's own API.
pub const EXTERNAL_ACTION: &str = "action_external";

/// Where a document of this table and kind keeps its secrets.
pub fn secret_paths(table: Table, kind: &str) -> &'static [&'static [&'static str]] {
    match (table, kind) {
        (Table::AccountConnections, TWILIO_ACCOUNT_CONNECTION) => &[&["credentials", "twilio_auth_token"]],
        (Table::AccountConnections, OPENAI_ACCOUNT_CONNECTION) => &[&["credentials", "openai_api_key"]],
        (Table::VectorDatabases, _) => &[&["api_key"]],
        (Table::Voices, "voice_eleven_labs" | "voice_play_ht") => &[&["api_key"]],
        (Table::Actions, EXTERNAL_ACTION) => &[&["config", "signature_secret"]],
        _ => &[],
    }
}

fn get_path<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn get_path_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(*key))
}

/// A document split for storage: the part that may be read from a database dump, and its
/// secrets sealed.
pub struct Sealed {
    pub body: Value,
    pub sealed: Option<Vec<u8>>,
}

/// Moves a document's secrets into one sealed blob.
pub fn seal(table: Table, kind: &str, mut body: Value, secrets: &SecretBox) -> Sealed {
    let mut found = Map::new();
    for path in secret_paths(table, kind) {
        if let Some(slot) = get_path_mut(&mut body, path) {
            if slot.is_string() {
                found.insert(path.join("."), slot.take());
            }
        }
    }
    let sealed = (!found.is_empty()).then(|| secrets.seal(&serde_json::to_vec(&Value::Object(found)).expect("JSON")));
    Sealed { body, sealed }
}

/// The document with its secrets back in place.
pub fn unseal(
    table: Table,
    kind: &str,
    mut body: Value,
    sealed: Option<&[u8]>,
    secrets: &SecretBox,
) -> anyhow::Result<Value> {
    let Some(sealed) = sealed else {
        return Ok(body);
    };
    let opened: Map<String, Value> = serde_json::from_slice(&secrets.open(sealed)?)?;
    for path in secret_paths(table, kind) {
        if let (Some(secret), Some(slot)) = (opened.get(&path.join(".")), get_path_mut(&mut body, path)) {
            *slot = secret.clone();
        }
    }
    Ok(body)
}

/// How a stored document is shown: `id` and `user_id` first, then its fields, with secrets
/// masked (a stored document holds no secrets, so the masks are made from the sealed values).
pub fn render(table: Table, kind: &str, id: Uuid, user_id: Uuid, clear_body: &Value, reveal: bool) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), Value::String(id.to_string()));
    out.insert("user_id".into(), Value::String(user_id.to_string()));
    let mut body = clear_body.clone();
    if !reveal {
        for path in secret_paths(table, kind) {
            if let Some(slot) = get_path_mut(&mut body, path) {
                if let Some(secret) = slot.as_str() {
                    *slot = Value::String(mask(secret));
                }
            }
        }
    }
    if let Value::Object(fields) = body {
        out.extend(fields);
    }
    Value::Object(out)
}

/// Applies a validated update (absent and `Undefined` fields already removed) to a document:
/// a field given replaces the stored one, `null` clears it. An update that changes a
/// discriminated `type` starts from an empty document, so it is checked as a whole new value.
/// A secret sent back as its own mask keeps the stored secret.
pub fn apply_update(resource: &Resource, table: Table, current: &Value, update: Value) -> Value {
    let current_kind = resource.kind_of(current);
    let same_kind =
        !resource.discriminated || update.get("type").and_then(Value::as_str).is_none_or(|t| t == current_kind);
    let mut merged = if same_kind { current.clone() } else { Value::Object(Map::new()) };
    if let (Value::Object(target), Value::Object(fields)) = (&mut merged, update) {
        target.extend(fields);
    }
    if same_kind {
        for path in secret_paths(table, &current_kind) {
            let stored = get_path(current, path).and_then(Value::as_str);
            let sent = get_path(&merged, path).and_then(Value::as_str);
            if let (Some(stored), Some(sent)) = (stored, sent) {
                if sent == mask(stored) {
                    let stored = stored.to_owned();
                    if let Some(slot) = get_path_mut(&mut merged, path) {
                        *slot = Value::String(stored);
                    }
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret_box() -> SecretBox {
        SecretBox::new(&[3u8; 32])
    }

    #[test]
    fn secrets_are_sealed_out_of_the_stored_document() {
        let doc = json!({"type": "account_connection_twilio",
                         "credentials": {"twilio_account_sid": "AC1", "twilio_auth_token": "tok-123456789"}});
        let b = secret_box();
        let sealed = seal(Table::AccountConnections, "account_connection_twilio", doc.clone(), &b);
        assert_eq!(sealed.body["credentials"]["twilio_auth_token"], Value::Null);
        assert!(!String::from_utf8_lossy(sealed.sealed.as_ref().unwrap()).contains("tok-123456789"));
        let back =
            unseal(Table::AccountConnections, "account_connection_twilio", sealed.body, sealed.sealed.as_deref(), &b)
                .unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn rendering_masks_secrets_unless_revealed() {
        let id = Uuid::now_v7();
        let user = Uuid::now_v7();
        let doc = json!({"type": "vector_database_pinecone", "index": "i", "api_key": "pc-abcdefgh1234", "api_environment": "e"});
        let shown = render(Table::VectorDatabases, "vector_database_pinecone", id, user, &doc, false);
        assert_eq!(shown["api_key"], "********1234");
        assert_eq!(shown["id"], id.to_string());
        let revealed = render(Table::VectorDatabases, "vector_database_pinecone", id, user, &doc, true);
        assert_eq!(revealed["api_key"], "pc-abcdefgh1234");
    }

    #[test]
    fn updates_replace_fields_keep_masked_secrets_and_restart_on_type_change() {
        let current =
            json!({"type": "voice_eleven_labs", "voice_id": "a", "api_key": "el-secret-9999", "stability": 0.5});
        let merged = apply_update(
            &VOICES,
            Table::Voices,
            &current,
            json!({"type": "voice_eleven_labs", "api_key": "********9999", "stability": null}),
        );
        assert_eq!(merged["api_key"], "el-secret-9999");
        assert_eq!(merged["stability"], Value::Null);
        assert_eq!(merged["voice_id"], "a");

        let changed = apply_update(&VOICES, Table::Voices, &current, json!({"type": "voice_azure", "voice_name": "v"}));
        assert_eq!(changed, json!({"type": "voice_azure", "voice_name": "v"}));

        let replaced = apply_update(
            &VOICES,
            Table::Voices,
            &current,
            json!({"type": "voice_eleven_labs", "api_key": "new-key-0000"}),
        );
        assert_eq!(replaced["api_key"], "new-key-0000");
    }
}
