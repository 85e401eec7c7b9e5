//! Types the rest of the server trusts: phone numbers, documents and their rules, agents.

pub mod agents;
pub mod call;
pub mod documents;
pub mod phone;
