//! Erlang's printing of terms, where RabbitMQ's error texts embed it.

/// Erlang's `io_lib:format("~p", [String])` for a byte string: quoted with escapes when
/// printable (latin-1 rules, so UTF-8 with no byte in 128..160 stays as is), else a list of
/// integers.
pub(crate) fn erl_p(s: &str) -> String {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return "[]".to_string();
    }
    let printable = bytes.iter().all(|&b| {
        (32..=126).contains(&b) || b >= 160 || matches!(b, b'\n' | b'\r' | b'\t' | 8 | 11 | 12 | 27)
    });
    if !printable {
        let items: Vec<String> = bytes.iter().map(u8::to_string).collect();
        return format!("[{}]", items.join(","));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            '\u{1b}' => out.push_str("\\e"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_p_formatting() {
        assert_eq!(erl_p("T_a b\"c\\d\te"), "\"T_a b\\\"c\\\\d\\te\"");
        assert_eq!(erl_p("\u{20ac}"), "[226,130,172]");
        assert_eq!(erl_p(""), "[]");
    }
}
