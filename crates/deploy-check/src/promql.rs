//! The metric names a PromQL expression selects — enough of PromQL for
//! alerts and dashboards: label matchers, ranges, grouping clauses, strings
//! and function calls are not names.

use std::collections::BTreeSet;

/// Operators and literals that look like names.
const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Clauses whose parenthesised list holds label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Removes `open … close` blocks (not nested across kinds; nested same kind is fine).
fn strip(text: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    for c in text.chars() {
        if c == open {
            depth += 1;
        } else if c == close && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

fn strip_strings(text: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
            None => out.push(c),
        }
    }
    out
}

/// Metric names in `expr` (Grafana's `label_values(metric{…}, label)` too).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = strip(&strip(&strip_strings(expr), '{', '}'), '[', ']');
    let chars: Vec<char> = text.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let preceded_by_digit =
                start > 0 && (chars[start - 1].is_ascii_digit() || chars[start - 1] == '.');
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let next_word: String = chars[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            // `sum by (…) (…)`: an aggregation with its clause first.
            let call = chars.get(j) == Some(&'(') || matches!(next_word.as_str(), "by" | "without");
            if GROUPING.contains(&word.as_str()) {
                skip_group = call;
            } else if !call
                && !preceded_by_digit
                && !word.starts_with('$')
                && !OPERATORS.contains(&word.as_str())
            {
                names.insert(word);
            }
        } else if c == '(' && skip_group {
            // A grouping clause's label list: skip to its closing parenthesis.
            skip_group = false;
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    // label_values(metric, label): the label is not a metric.
    if expr.trim_start().starts_with("label_values(")
        && let Some(label) = expr.rsplit(',').next()
    {
        names.remove(label.trim().trim_end_matches(')').trim());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::metric_names;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn finds_selected_metrics_only() {
        assert_eq!(
            names(
                r#"sum by (service) (rate(grpc_server_handled_total{grpc_code=~"Internal|Unknown"}[5m])) / sum by (service) (rate(grpc_server_started_total[5m])) > 0.05"#
            ),
            ["grpc_server_handled_total", "grpc_server_started_total"]
        );
        assert_eq!(
            names(
                "histogram_quantile(0.95, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{x=\"1\"}[$__rate_interval])))"
            ),
            ["grpc_server_handling_seconds_bucket"]
        );
        assert_eq!(
            names("max by (breaker) (circuit_breaker_state) == 1"),
            ["circuit_breaker_state"]
        );
        assert_eq!(
            names("up == 0 and on(pod) kube_pod_info"),
            ["kube_pod_info", "up"]
        );
        assert_eq!(
            names(r#"label_values(grpc_server_started_total{namespace="mercato"}, service)"#),
            ["grpc_server_started_total"]
        );
        assert_eq!(names("a_total offset 5m / b_total"), ["a_total", "b_total"]);
    }
}
