//! A problem with one value of a request, located the way pydantic locates it (`loc`, `msg`,
//! `type`): the vocabulary of validation, shared by the rules in [`crate::domain`] and the HTTP
//! edge that reports them.

use serde::Serialize;

/// One step of a validation error's location: a field name or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Loc {
    Field(String),
    Index(usize),
}

impl From<&str> for Loc {
    fn from(s: &str) -> Self {
        Loc::Field(s.to_owned())
    }
}

impl From<usize> for Loc {
    fn from(i: usize) -> Self {
        Loc::Index(i)
    }
}

/// One entry of a 422 `detail` list, as pydantic reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    pub loc: Vec<Loc>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Issue {
    pub fn new(loc: Vec<Loc>, kind: &str, msg: impl Into<String>) -> Self {
        Issue { loc, msg: msg.into(), kind: kind.to_owned() }
    }

    /// An issue about a field of the request body, e.g. `Issue::body(&["agent", "voice"], ..)`.
    pub fn body(path: &[&str], kind: &str, msg: impl Into<String>) -> Self {
        let mut loc = vec![Loc::from("body")];
        loc.extend(path.iter().map(|p| Loc::from(*p)));
        Issue::new(loc, kind, msg)
    }

    pub fn query(name: &str, kind: &str, msg: impl Into<String>) -> Self {
        Issue::new(vec!["query".into(), name.into()], kind, msg)
    }
}
