//! Reading PromQL in the alert rules without a parser: the words that are
//! never metric names, and stepping over bracketed and quoted parts.

/// PromQL words that are never metric names although no `(` follows them
/// (aggregations, operators, modifiers, literals).
pub const PROMQL_NON_METRIC_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "group_left",
    "group_right",
];

/// PromQL keywords followed by a parenthesised list of label names.
pub const PROMQL_LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the `close` matching the delimiter at `start` of a PromQL
/// expression, stepping over quoted strings.
pub fn promql_skip_enclosed(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            c if c == close => return i + 1,
            '"' | '\'' | '`' => i = promql_skip_string(chars, i),
            _ => i += 1,
        }
    }
    i
}

/// Index just past the PromQL string literal that starts at `start`.
pub fn promql_skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}
