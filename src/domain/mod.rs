//! Types the rest of the server trusts, and the pure rules over them: phone numbers, documents
//! and their secrets, agents and their dials, the call state machine, validation issues. Nothing
//! here does I/O or imports another module of the server but [`crate::crypto`].

pub mod agents;
pub mod call;
pub mod documents;
pub mod issue;
pub mod phone;
