//! SockJS framing: client payloads (`xhr_send`, WebSocket) and the frames sent back.
//!
//! Input: one mode byte, then either a raw payload or structured messages. Checks: no panic on
//! any payload; decoded messages re-encode as an `a[...]` frame that decodes to the same
//! messages; every transport wrapping keeps the frame inside its container (no raw CR/LF in an
//! EventSource `data:` line, no `</script` inside htmlfile's script, jsonp is one call).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use stompgate::sockjs::fuzzing;

#[derive(Arbitrary, Debug)]
struct Outgoing {
    messages: Vec<String>,
    close_code: u16,
    close_reason: String,
    callback: String,
}

/// An encoded frame still decodes to what was encoded.
fn check_array(messages: &[String]) {
    let frame = fuzzing::array_frame(messages);
    let body = frame.strip_prefix('a').expect("array frames start with a");
    assert_eq!(
        fuzzing::decode_messages(body, false).as_deref(),
        Ok(messages),
        "{frame}"
    );
    check_wrapping(&frame, "_jp.cb");
}

fn check_wrapping(frame: &str, callback: &str) {
    if !fuzzing::valid_callback(callback) {
        return;
    }
    let [xhr, xhr_streaming, eventsource, htmlfile, jsonp] = fuzzing::wrap_all(frame, callback);
    // Frames are quoted JSON: no raw newline inside, so one frame is one line.
    assert_eq!(xhr, format!("{frame}\n"));
    assert_eq!(xhr.matches('\n').count(), 1, "frame spans lines: {xhr:?}");
    assert_eq!(xhr_streaming, xhr);
    let data = eventsource
        .strip_prefix("data: ")
        .and_then(|s| s.strip_suffix("\r\n\r\n"))
        .expect("eventsource framing");
    assert!(
        !data.contains(['\r', '\n', '\0']),
        "eventsource: {eventsource:?}"
    );
    let script = htmlfile
        .strip_prefix("<script>\np(")
        .and_then(|s| s.strip_suffix(");\n</script>\r\n"))
        .expect("htmlfile framing");
    assert!(
        !script.to_ascii_lowercase().contains("</script"),
        "{htmlfile:?}"
    );
    // `<` is written as `\u003c`, which JSON (and JavaScript) read back as `<`.
    let arg: String = serde_json::from_str(script).expect("htmlfile argument is a JSON string");
    assert_eq!(arg, frame);
    let arg = jsonp
        .strip_prefix(&format!("{callback}("))
        .and_then(|s| s.strip_suffix(");\r\n"))
        .expect("jsonp framing");
    let arg: String = serde_json::from_str(arg).expect("jsonp argument is a JSON string");
    assert_eq!(arg, frame);
    // Pre-ES2019 JavaScript ends a string literal at U+2028/U+2029.
    for script in [&htmlfile, &jsonp] {
        assert!(!script.contains(['\u{2028}', '\u{2029}']), "{script:?}");
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw client payload, as received.
        let Ok(payload) = std::str::from_utf8(rest) else {
            return;
        };
        for allow_single in [false, true] {
            if let Ok(messages) = fuzzing::decode_messages(payload, allow_single) {
                check_array(&messages);
            }
        }
    } else {
        let Ok(out) = Outgoing::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        check_array(&out.messages);
        let close = fuzzing::close_frame(out.close_code, &out.close_reason);
        let body = close.strip_prefix('c').expect("close frames start with c");
        let parsed: (u16, String) = serde_json::from_str(body).expect("close frame is JSON");
        assert_eq!(parsed, (out.close_code, out.close_reason.clone()));
        check_wrapping(&close, &out.callback);
        check_wrapping("o", &out.callback);
        check_wrapping("h", &out.callback);
    }
});
