//! Config errors: every problem names the file, the key and the reason, one line each.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config file: which key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `routes[0].timeout`.
    pub key: String,
    /// Why the value was refused.
    pub reason: String,
}

impl ConfigIssue {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("{}:{line}: {key}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    /// The file parsed, but values are invalid; every problem found is listed.
    #[error("{}", Lines(path, issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// One human-readable line per problem.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, issues } => issues
                .iter()
                .map(|i| format!("{}: {}: {}", path.display(), i.key, i.reason))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

struct Lines<'a>(&'a PathBuf, &'a [ConfigIssue]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, issue) in self.1.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.0.display(), issue.key, issue.reason)?;
        }
        Ok(())
    }
}
