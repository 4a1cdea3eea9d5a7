//! `rewrite`: the path sent upstream, by a regular expression (`path_regex`, compiled once
//! at load) and its `replacement` (`$1`, `${name}` for the groups). The first match in the
//! client's path is replaced; a path the expression does not match goes on as it came (and
//! the route's `strip_prefix` applies to it as usual). A rewritten path is not stripped: the
//! rewrite says what the upstream gets. The query is kept.

use serde::Deserialize;

use super::{read, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    path_regex: String,
    replacement: String,
}

/// Compiled expressions are capped (the regex crate's default is 10 MiB): a pattern meant
/// for a path needs far less.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// One `rewrite` filter.
#[derive(Debug)]
pub(super) struct Rewrite {
    name: String,
    regex: regex::Regex,
    replacement: String,
}

/// Bytes a path may hold as the codec forwards it (RFC 3986 `pchar`s, `/` and `%`): what a
/// replacement may add.
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)
}

impl Rewrite {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let regex = regex::RegexBuilder::new(&settings.path_regex)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|e| FilterError::new(name, "path_regex", e.to_string()))?;
        let replacement = settings.replacement;
        if let Some(bad) = replacement
            .bytes()
            .find(|&b| !is_path_byte(b) && b != b'{' && b != b'}')
        {
            return Err(FilterError::new(
                name,
                "replacement",
                format!(
                    "{:?} may not be in a path (the query is kept as it came)",
                    char::from(bad)
                ),
            ));
        }
        // Every `$N` and `${name}` must be a group of the expression.
        let mut names = regex.capture_names();
        let groups = regex.captures_len();
        let named: Vec<&str> = names.by_ref().flatten().collect();
        for reference in references(&replacement) {
            let known = match reference.parse::<usize>() {
                Ok(n) => n < groups,
                Err(_) => named.contains(&reference),
            };
            if !known {
                return Err(FilterError::new(
                    name,
                    "replacement",
                    format!("${reference} is no group of path_regex"),
                ));
            }
        }
        Ok(Self {
            name: name.to_string(),
            regex,
            replacement,
        })
    }
}

/// The group references of a replacement (`$1`, `${name}`; `$$` is a literal `$`).
fn references(replacement: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            rest = escaped;
        } else if let Some(open) = after.strip_prefix('{') {
            let end = open.find('}').unwrap_or(open.len());
            out.push(&open[..end]);
            rest = open.get(end + 1..).unwrap_or("");
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end > 0 {
                out.push(&after[..end]);
            }
            rest = &after[end..];
        }
    }
    out
}

impl Rewrite {
    /// The rewritten path, or `None` when the expression does not match.
    fn rewrite(&self, path: &str) -> Option<String> {
        let found = self.regex.captures(path)?;
        let whole = found.get(0)?;
        let mut out = String::with_capacity(path.len() + self.replacement.len());
        out.push_str(&path[..whole.start()]);
        found.expand(&self.replacement, &mut out);
        out.push_str(&path[whole.end()..]);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Some(out)
    }
}

impl Filter for Rewrite {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        _route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        // A second rewrite in the chain works on the first one's result.
        let path = state.path.as_deref().unwrap_or(request.path());
        if let Some(rewritten) = self.rewrite(path) {
            state.path = Some(rewritten);
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<Rewrite, FilterError> {
        Rewrite::build("w", &toml::from_str(text).unwrap())
    }

    #[test]
    fn paths_are_rewritten_by_the_first_match() {
        let w = build(
            r#"path_regex = "^/api/v1/(?P<rest>.*)$"
            replacement = "/v2/${rest}""#,
        )
        .unwrap();
        assert_eq!(w.rewrite("/api/v1/users/7").as_deref(), Some("/v2/users/7"));
        assert_eq!(w.rewrite("/other"), None);
        let w = build(
            r#"path_regex = "/old/"
            replacement = "/new/""#,
        )
        .unwrap();
        assert_eq!(w.rewrite("/a/old/b/old/").as_deref(), Some("/a/new/b/old/"));
        let w = build(
            r#"path_regex = "^/users/([0-9]+)"
            replacement = "people/$1""#,
        )
        .unwrap();
        assert_eq!(w.rewrite("/users/42/x").as_deref(), Some("/people/42/x"));
    }

    #[test]
    fn settings_are_checked() {
        let key = |text: &str| build(text).unwrap_err().key;
        assert_eq!(key("path_regex = \"(\"\nreplacement = \"/\""), "path_regex");
        assert_eq!(
            key("path_regex = \"^/a\"\nreplacement = \"/b?x=1\""),
            "replacement"
        );
        assert_eq!(
            key("path_regex = \"^/a\"\nreplacement = \"/b c\""),
            "replacement"
        );
        assert_eq!(
            key("path_regex = \"^/(a)\"\nreplacement = \"/$2\""),
            "replacement"
        );
        assert_eq!(
            key("path_regex = \"^/(a)\"\nreplacement = \"/${nope}\""),
            "replacement"
        );
        assert_eq!(
            key("path_regex = \"^/a\""),
            ".",
            "missing: named by the message"
        );
        assert_eq!(references("/$1/${x}/$$/$y_z-"), ["1", "x", "y_z"]);
    }
}
