//! `headers`: rules for the request as sent upstream and for the response to the client —
//! `remove` names, then `set` (replacing every field of the name), then `add` (beside the
//! ones there) — with values that may use `${…}` variables (`filters::template`), rendered
//! per request; a value without variables costs no rendering.

use std::collections::BTreeMap;

use http::HeaderName;
use serde::Deserialize;

use super::template::{Context, ValueTemplate};
use super::{read, FilterError};
use crate::gateway::engine::filters::{EditName, Filter, FilterState, HeaderEdits, Verdict};
use crate::gateway::engine::RequestView;
use crate::gateway::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    request: Option<RuleSettings>,
    response: Option<RuleSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Fields the gateway sets on every upstream request (`X-Forwarded-*`).
const FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// The rules for one side, in the order they are made.
#[derive(Debug, Default)]
struct Rules {
    remove: Vec<EditName>,
    set: Vec<(EditName, ValueTemplate)>,
    add: Vec<(EditName, ValueTemplate)>,
}

impl Rules {
    fn build(name: &str, side: Side, settings: RuleSettings) -> Result<Self, FilterError> {
        let header = |op: &str, text: &str| -> Result<EditName, FilterError> {
            let key = format!("{}.{op}", side.key());
            let header = HeaderName::from_bytes(text.trim().as_bytes())
                .map_err(|_| FilterError::new(name, &key, format!("bad header name {text:?}")))?;
            let refused = super::frames_or_hops(header.as_str())
                || (side == Side::Request && FORWARDED.contains(&header.as_str()))
                || (header == http::header::HOST && (side == Side::Response || op != "set"));
            if refused {
                return Err(FilterError::new(
                    name,
                    key,
                    format!("{header:?} is written by the gateway itself"),
                ));
            }
            Ok(EditName::intern(&header))
        };
        let values = |op: &str, map: BTreeMap<String, String>| {
            map.into_iter()
                .map(|(field, text)| {
                    let header = header(op, &field)?;
                    let value = ValueTemplate::parse(&text).map_err(|reason| {
                        FilterError::new(name, format!("{}.{op}.{field}", side.key()), reason)
                    })?;
                    Ok((header, value))
                })
                .collect::<Result<Vec<_>, FilterError>>()
        };
        Ok(Self {
            remove: settings
                .remove
                .iter()
                .map(|field| header("remove", field))
                .collect::<Result<_, _>>()?,
            set: values("set", settings.set)?,
            add: values("add", settings.add)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// The rules' edits for one request.
    fn edit(&self, cx: &Context<'_>, edits: &mut HeaderEdits) {
        for name in &self.remove {
            edits.remove(*name);
        }
        for (name, value) in &self.set {
            if let Some(constant) = value.constant() {
                edits.set(*name, constant);
            } else if !edits.set_with(*name, |out| value.render_into(cx, out)) {
                // A value the variables made unusable (a control byte) leaves the field out.
                edits.remove(*name);
            }
        }
        for (name, value) in &self.add {
            match value.constant() {
                Some(constant) => edits.add(*name, constant),
                None => {
                    edits.add_with(*name, |out| value.render_into(cx, out));
                }
            }
        }
    }
}

/// One `headers` filter.
#[derive(Debug)]
pub(super) struct Headers {
    name: String,
    request: Rules,
    response: Rules,
}

impl Headers {
    pub(super) fn build(name: &str, table: &toml::Table) -> Result<Self, FilterError> {
        let settings: Settings = read(name, table)?;
        let request = Rules::build(name, Side::Request, settings.request.unwrap_or_default())?;
        let response = Rules::build(name, Side::Response, settings.response.unwrap_or_default())?;
        if request.is_empty() && response.is_empty() {
            return Err(FilterError::new(
                name,
                "",
                "no rule: give `request` or `response` a `set`, `add` or `remove`",
            ));
        }
        Ok(Self {
            name: name.to_string(),
            request,
            response,
        })
    }
}

impl Filter for Headers {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(
        &self,
        route: &Route,
        request: &dyn RequestView,
        state: &mut FilterState,
    ) -> Verdict {
        // The edits are made to the state's own lists, taken out while the values render
        // from the rest of the state (no list of their own to copy over).
        let mut upstream = std::mem::take(&mut state.upstream);
        let mut response = std::mem::take(&mut state.response);
        {
            let cx = Context {
                route,
                request,
                state,
            };
            self.request.edit(&cx, &mut upstream);
            self.response.edit(&cx, &mut response);
        }
        state.upstream = upstream;
        state.response = response;
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<Headers, FilterError> {
        Headers::build("h", &toml::from_str(text).unwrap())
    }

    #[test]
    fn rules_are_read_and_the_gateways_own_fields_refused() {
        let h = build(
            r#"
            request = { set = { "x-env" = "prod", host = "internal" }, add = { "x-via" = "${route}" }, remove = ["x-debug"] }
            response = { remove = ["server"] }
            "#,
        )
        .unwrap();
        assert_eq!(h.request.set.len(), 2);
        assert_eq!(h.request.remove[0].as_str(), "x-debug");
        assert_eq!(h.response.remove[0].header(), &http::header::SERVER);
        let refused = |text: &str, key: &str| {
            let e = build(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        };
        refused(
            r#"request = { set = { "content-length" = "1" } }"#,
            "request.set",
        );
        refused(
            r#"response = { remove = ["Transfer-Encoding"] }"#,
            "response.remove",
        );
        refused(
            r#"request = { set = { "x-forwarded-for" = "1.2.3.4" } }"#,
            "request.set",
        );
        refused(r#"request = { remove = ["host"] }"#, "request.remove");
        refused(
            r#"request = { set = { "x-a" = "${nope}" } }"#,
            "request.set.x-a",
        );
        refused(r#"request = { set = { "bad name" = "1" } }"#, "request.set");
        refused(r#"request = { sett = {} }"#, "request.sett");
        refused("", "");
        // The forwarded fields may be set on the response.
        assert!(build(r#"response = { set = { "x-forwarded-for" = "x" } }"#).is_ok());
    }
}
