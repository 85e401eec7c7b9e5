//! Types the rest of the server trusts: phone numbers, documents and their rules.

pub mod documents;
pub mod phone;
