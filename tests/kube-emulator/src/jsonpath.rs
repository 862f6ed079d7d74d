//! The subset of Kubernetes JSONPath that printer columns use: `.a.b`, `.a[0]`, `.a[*]`,
//! `.a[?(@.type=="Ready")].status`, optionally wrapped in `{...}`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter(Vec<String>, bool, Value),
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let b = p.as_bytes();
    let mut i = 0;
    let mut steps = Vec::new();
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                i = start;
                while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                    i += 1;
                }
                if i > start {
                    steps.push(Step::Field(p[start..i].to_string()));
                }
            }
            b'[' => {
                let end = p[i..].find(']')? + i;
                let inner = p[i + 1..end].trim();
                // A filter may itself contain ']' only inside quotes; we do not support that.
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Some(f) = inner.strip_prefix("?(").and_then(|s| s.strip_suffix(')')) {
                    let (lhs, eq, rhs) = if let Some((l, r)) = f.split_once("==") {
                        (l, true, r)
                    } else if let Some((l, r)) = f.split_once("!=") {
                        (l, false, r)
                    } else {
                        return None;
                    };
                    let lhs = lhs.trim().strip_prefix("@.")?;
                    let rhs = rhs.trim();
                    let val = if let Some(s) = rhs
                        .strip_prefix('"')
                        .and_then(|s| s.strip_suffix('"'))
                        .or_else(|| rhs.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                    {
                        Value::String(s.to_string())
                    } else {
                        serde_json::from_str(rhs).ok()?
                    };
                    steps.push(Step::Filter(
                        lhs.split('.').map(str::to_string).collect(),
                        eq,
                        val,
                    ));
                } else if let Some(s) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    steps.push(Step::Field(s.to_string()));
                } else {
                    steps.push(Step::Index(inner.parse().ok()?));
                }
                i = end + 1;
            }
            _ => return None,
        }
    }
    Some(steps)
}

/// Evaluates a path; `None` when the path is not in the supported subset.
pub fn eval(path: &str, v: &Value) -> Option<Vec<Value>> {
    let steps = parse(path)?;
    let mut cur = vec![v.clone()];
    for s in &steps {
        let mut next = Vec::new();
        for c in &cur {
            match s {
                Step::Field(f) => {
                    if let Some(x) = c.get(f) {
                        next.push(x.clone());
                    }
                }
                Step::Index(n) => {
                    if let Some(a) = c.as_array() {
                        let idx = if *n < 0 { a.len() as i64 + n } else { *n };
                        if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                            next.push(x.clone());
                        }
                    }
                }
                Step::All => match c {
                    Value::Array(a) => next.extend(a.iter().cloned()),
                    Value::Object(m) => next.extend(m.values().cloned()),
                    _ => {}
                },
                Step::Filter(field, eq, val) => {
                    if let Some(a) = c.as_array() {
                        for item in a {
                            let mut x = Some(item);
                            for f in field {
                                x = x.and_then(|x| x.get(f));
                            }
                            if x.is_some_and(|x| (x == val) == *eq) {
                                next.push(item.clone());
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    Some(cur)
}

/// Whether `path` is in the supported subset.
pub fn is_supported(path: &str) -> bool {
    parse(path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}], "n": 2}, "spec": {"l": [1, 2]}});
        assert_eq!(
            eval(".status.conditions[?(@.type==\"Ready\")].status", &o).unwrap(),
            vec![json!("True")]
        );
        assert_eq!(eval(".status.n", &o).unwrap(), vec![json!(2)]);
        assert_eq!(eval("{.spec.l[*]}", &o).unwrap(), vec![json!(1), json!(2)]);
        assert_eq!(eval(".spec.l[-1]", &o).unwrap(), vec![json!(2)]);
        assert!(eval(".missing.x", &o).unwrap().is_empty());
        assert!(!is_supported("status..x[?(@.a>1)]"));
    }
}
