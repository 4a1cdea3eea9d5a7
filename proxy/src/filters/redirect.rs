//! `redirect`: the gateway answers with a redirect to `to` (a `${…}` template: `https://${host}${uri}`
//! sends a plain-http client to https) and `status` 301, 302 (the default), 307 or 308.

use http::HeaderValue;
use serde::Deserialize;

use super::template::{Context, Template};
use super::{read, FilterError};
use crate::gateway::engine::filters::{Filter, FilterState, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::failure::Answer;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    to: String,
    status: Option<u16>,
}

const STATUSES: [u16; 4] = [301, 302, 307, 308];

/// One `redirect` filter.
#[derive(Debug)]
pub(super) struct Redirect {
    name: String,
    to: Template,
    status: u16,
}

impl Redirect {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let to = Template::parse(settings.to.trim())
            .map_err(|e| FilterError::new(name, "to", e.to_string()))?;
        if settings.to.trim().is_empty() {
            return Err(FilterError::new(
                name,
                "to",
                "empty: where to send the client",
            ));
        }
        if let Some(text) = to.constant() {
            HeaderValue::from_str(text).map_err(|_| {
                FilterError::new(name, "to", format!("{text:?} cannot be a Location"))
            })?;
        }
        let status = settings.status.unwrap_or(302);
        if !STATUSES.contains(&status) {
            return Err(FilterError::new(
                name,
                "status",
                format!("{status}: expected 301, 302, 307 or 308"),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            to,
            status,
        })
    }
}

impl Filter for Redirect {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        let location = self.to.render(&Context {
            route,
            request,
            state,
        });
        let answer = match HeaderValue::from_str(&location) {
            Ok(value) => Answer::reply(
                self.status,
                format!("sluice: redirecting to {location}\n"),
                vec![(http::header::LOCATION, value)],
            ),
            // Only a request's own bytes can make it so; they come from a parsed request
            // head, so this is not expected.
            Err(_) => Answer::plain(
                500,
                "sluice: the redirect's target is no valid Location\n".to_string(),
                "RedirectInvalid",
            ),
        };
        Verdict::Answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<Redirect, FilterError> {
        Redirect::build("r", &toml::from_str(text).unwrap())
    }

    #[test]
    fn settings_are_checked() {
        let r = build(r#"to = "https://${host}${uri}""#).unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(
            build(
                r#"to = "/x"
            status = 303"#
            )
            .unwrap_err()
            .key,
            "status"
        );
        assert_eq!(build(r#"to = "${nope}""#).unwrap_err().key, "to");
        assert_eq!(build(r#"to = """#).unwrap_err().key, "to");
        assert_eq!(build(r#"to = "a\nb""#).unwrap_err().key, "to");
        // A missing key is named by its message (`missing field \`to\``).
        assert_eq!(build(r#"status = 301"#).unwrap_err().key, ".");
    }
}
