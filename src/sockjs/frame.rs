//! SockJS framing: JSON quoting with SockJS's extra escapes, frame letters, per-transport wrapping.

use std::fmt::Write as _;

/// Characters sockjs-node escapes beyond JSON: browsers and proxies mangle them (JSON escapes
/// `\x00-\x1f` itself). Surrogates are handled by escaping every astral character as a pair.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}')
}

/// Appends `s` as a JSON string the way sockjs-node's `quote` does: `JSON.stringify`, then the
/// SockJS escapable ranges as `\uXXXX` (lowercase hex). JavaScript strings are UTF-16, so
/// sockjs-node escapes characters above U+FFFF as two surrogate escapes; so do we.
pub(crate) fn quote_into(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || needs_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) > 0xffff => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) fn quote(s: &str) -> String {
    let mut out = String::new();
    quote_into(&mut out, s);
    out
}

/// `a["m1","m2"]`.
pub(crate) fn array_frame<S: AsRef<str>>(messages: &[S]) -> String {
    let len: usize = messages.iter().map(|m| m.as_ref().len() + 3).sum();
    let mut out = String::with_capacity(len + 3);
    out.push_str("a[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        quote_into(&mut out, m.as_ref());
    }
    out.push(']');
    out
}

/// `c[3000,"Go away!"]`.
pub(crate) fn close_frame(code: u16, reason: &str) -> String {
    format!("c[{code},{}]", quote(reason))
}

pub(crate) const OPEN: &str = "o";
pub(crate) const HEARTBEAT: &str = "h";

/// A JSON string literal for embedding a frame in a script (jsonp, htmlfile). Frames are already
/// SockJS-quoted, so only `"`, `\` and controls can occur; `serde_json` matches `JSON.stringify`.
fn js_string(frame: &str) -> String {
    serde_json::to_string(frame).unwrap_or_else(|_| String::from("\"\""))
}

/// The wrapping each HTTP transport puts around a frame.
#[derive(Debug, Clone)]
pub(crate) enum HttpFraming {
    XhrPolling,
    XhrStreaming,
    EventSource,
    HtmlFile { callback: String },
    Jsonp { callback: String },
}

impl HttpFraming {
    /// Polling transports end the response after one frame.
    pub(crate) fn polling(&self) -> bool {
        matches!(self, Self::XhrPolling | Self::Jsonp { .. })
    }

    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Self::XhrPolling | Self::XhrStreaming | Self::Jsonp { .. } => {
                "application/javascript; charset=UTF-8"
            }
            Self::EventSource => "text/event-stream; charset=UTF-8",
            Self::HtmlFile { .. } => "text/html; charset=UTF-8",
        }
    }

    /// Bytes sent before the first frame.
    pub(crate) fn prelude(&self) -> Option<String> {
        match self {
            // IE's XDR/XHR buffer the first 2 KiB before firing progress events.
            Self::XhrStreaming => Some(format!("{}\n", "h".repeat(2048))),
            // Opera needed a newline before the first event.
            Self::EventSource => Some("\r\n".to_owned()),
            Self::HtmlFile { callback } => Some(htmlfile_prelude(callback)),
            Self::XhrPolling | Self::Jsonp { .. } => None,
        }
    }

    pub(crate) fn wrap(&self, frame: &str) -> String {
        match self {
            Self::XhrPolling | Self::XhrStreaming => format!("{frame}\n"),
            Self::EventSource => format!("data: {}\r\n\r\n", escape_eventsource(frame)),
            // `<` escaped so a message containing `</script>` cannot end the script element.
            Self::HtmlFile { .. } => format!(
                "<script>\np({});\n</script>\r\n",
                js_string(frame).replace('<', "\\u003c")
            ),
            Self::Jsonp { callback } => format!("{callback}({});\r\n", js_string(frame)),
        }
    }
}

/// sockjs-node's `escape_selected(payload, '\r\n\x00')`: JavaScript `escape()` of `%`, CR, LF,
/// NUL. Clients undo it (`unescape` in 0.3, `decodeURI` in 1.x), so `%` must be escaped too.
fn escape_eventsource(frame: &str) -> String {
    let mut out = String::with_capacity(frame.len());
    for c in frame.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

const HTMLFILE_TEMPLATE: &str = r#"<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{{ callback }};
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>
"#;

fn htmlfile_prelude(callback: &str) -> String {
    // The template ends without a newline in sockjs-node; trim ours. Safari needs >= 1 KiB before
    // it renders anything, so pad exactly as sockjs-node does (computed with the placeholder).
    let template = HTMLFILE_TEMPLATE.trim_end_matches('\n');
    let padding = (1024 + 13usize).saturating_sub(template.len());
    let mut out = template.replace("{{ callback }}", callback);
    out.push_str(&" ".repeat(padding));
    out.push_str("\r\n\r\n");
    out
}

/// jsonp/htmlfile callbacks end up in a script; allow only what sockjs-client generates
/// (`_jp.a1b2c3`), as sockjs-node >= 0.3.10 does.
pub(crate) fn valid_callback(callback: &str) -> bool {
    !callback.is_empty()
        && callback.len() <= 32
        && callback
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

const IFRAME_TEMPLATE: &str = r#"<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script>
    document.domain = document.domain;
    _sockjs_onload = function(){SockJS.bootstrap_iframe();};
  </script>
  <script src="{{ sockjs_url }}"></script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"#;

/// The iframe page and its quoted ETag (MD5 of the page, as sockjs-node).
pub(crate) fn iframe_page(sockjs_url: &str) -> (String, String) {
    use md5::Digest;
    let url = sockjs_url
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let page = IFRAME_TEMPLATE.replace("{{ sockjs_url }}", &url);
    let etag = format!("\"{}\"", hex::encode(md5::Md5::digest(page.as_bytes())));
    (page, etag)
}

/// Decodes a client payload: a JSON array of strings (`xhr_send`, `jsonp_send`, WebSocket) or,
/// on WebSocket only, a single JSON string.
pub(crate) fn decode_messages(
    payload: &str,
    allow_single: bool,
) -> Result<Vec<String>, BadPayload> {
    if payload.is_empty() {
        return Err(BadPayload::Expected);
    }
    let value: serde_json::Value =
        serde_json::from_str(payload).map_err(|_| BadPayload::BrokenJson)?;
    match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                // sockjs-client always sends strings; anything else is not SockJS.
                _ => Err(BadPayload::Expected),
            })
            .collect(),
        serde_json::Value::String(s) if allow_single => Ok(vec![s]),
        _ => Err(BadPayload::Expected),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadPayload {
    Expected,
    BrokenJson,
}

impl BadPayload {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Expected => "Payload expected.",
            Self::BrokenJson => "Broken JSON encoding.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_sockjs_node() {
        assert_eq!(quote("a"), r#""a""#);
        assert_eq!(quote("\"\\\n\r\t\u{8}\u{c}"), r#""\"\\\n\r\t\b\f""#);
        assert_eq!(quote("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        assert_eq!(quote("\u{7f}é\u{2027}"), "\"\u{7f}é\u{2027}\"");
        assert_eq!(
            quote("\u{200c}\u{200f}\u{2028}\u{202f}\u{2060}\u{206f}\u{fff0}\u{ffff}"),
            r#""\u200c\u200f\u2028\u202f\u2060\u206f\ufff0\uffff""#
        );
        assert_eq!(quote("\u{1f600}"), r#""\ud83d\ude00""#);
    }

    #[test]
    fn frames() {
        assert_eq!(array_frame(&["a", "b\"c"]), r#"a["a","b\"c"]"#);
        assert_eq!(close_frame(3000, "Go away!"), r#"c[3000,"Go away!"]"#);
    }

    #[test]
    fn transport_wrapping() {
        let html = HttpFraming::HtmlFile {
            callback: "cb".into(),
        };
        assert_eq!(
            html.wrap(r#"a["x"]"#),
            "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n"
        );
        assert_eq!(
            html.wrap(r#"a["</script>"]"#),
            "<script>\np(\"a[\\\"\\u003c/script>\\\"]\");\n</script>\r\n"
        );
        let prelude = html.prelude().unwrap_or_default();
        assert!(prelude.len() > 1024);
        assert!(prelude.contains("var c = parent.cb;"));
        assert!(prelude.ends_with("\r\n\r\n"));
        assert!(prelude.trim().ends_with("</script>"));
        assert_eq!(
            HttpFraming::EventSource.wrap("a[\"100%\"]"),
            "data: a[\"100%25\"]\r\n\r\n"
        );
        let jsonp = HttpFraming::Jsonp {
            callback: "x".into(),
        };
        assert_eq!(jsonp.wrap("o"), "x(\"o\");\r\n");
    }

    #[test]
    fn callbacks() {
        assert!(valid_callback("_jp.a1b2c3"));
        assert!(valid_callback("callback"));
        assert!(!valid_callback(""));
        assert!(!valid_callback("alert(1)"));
        assert!(!valid_callback(&"a".repeat(33)));
    }

    #[test]
    fn payloads() {
        assert_eq!(
            decode_messages(r#"["a","b"]"#, false),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(decode_messages(r#""a""#, true), Ok(vec!["a".into()]));
        assert_eq!(decode_messages(r#""a""#, false), Err(BadPayload::Expected));
        assert_eq!(decode_messages("", false), Err(BadPayload::Expected));
        assert_eq!(
            decode_messages(r#"["a"#, false),
            Err(BadPayload::BrokenJson)
        );
        assert_eq!(decode_messages("[1]", false), Err(BadPayload::Expected));
        assert_eq!(
            decode_messages(r#"["\u2028\ud83d\ude00"]"#, false),
            Ok(vec!["\u{2028}\u{1f600}".into()])
        );
    }

    #[test]
    fn iframe_etag_is_stable() {
        let (page, etag) = iframe_page("/sockjs.js");
        assert!(page.contains(r#"<script src="/sockjs.js"></script>"#));
        assert_eq!(iframe_page("/sockjs.js").1, etag);
        assert_ne!(iframe_page("/other.js").1, etag);
    }
}
