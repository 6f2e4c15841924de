//! Reading a `/metrics` page back: every sample with its labels, so tests
//! can compare exact counts.

use std::{collections::BTreeMap, net::SocketAddr};

/// One line of the exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of a scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// GETs `/metrics` from `addr` and parses it.
    pub async fn from(addr: SocketAddr) -> Self {
        let (code, body) = crate::http_get(addr, "/metrics").await;
        assert_eq!(code, 200, "GET /metrics: {body}");
        Self::parse(&body)
    }

    /// Parses the text format (OpenMetrics or Prometheus 0.0.4).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line {line:?}")))
            .collect();
        Self { samples }
    }

    /// The sum of the samples named `name` whose labels include `labels`
    /// (0 when there are none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The samples named `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// Every distinct metric name.
    pub fn names(&self) -> std::collections::BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open..]),
        None => line.split_once(' ')?,
    };
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(body) => parse_labels(body)?,
        None => (BTreeMap::new(), rest),
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="1",b="q\"uote"}` → the labels and what follows the closing brace.
fn parse_labels(body: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '}' {
            return Some((labels, &body[i + 1..]));
        }
        let mut eq = i;
        for (j, c) in chars.by_ref() {
            if c == '=' {
                eq = j;
                break;
            }
        }
        let key = body[i..eq].trim_start_matches(',').trim().to_owned();
        chars.next(); // opening quote
        let mut value = String::new();
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(key, value);
        if let Some((_, ',')) = chars.peek() {
            chars.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Scrape;

    #[test]
    fn parses_labels_values_and_escapes() {
        let scrape = Scrape::parse(
            "# HELP x help\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uote\"} 3\nplain 2.5\nh_bucket{le=\"+Inf\"} 4\n# EOF\n",
        );
        assert_eq!(scrape.value("x_total", &[("a", "1")]), 3.0);
        assert_eq!(scrape.samples[0].labels["b"], "q\"uote");
        assert_eq!(scrape.value("plain", &[]), 2.5);
        assert_eq!(scrape.value("h_bucket", &[("le", "+Inf")]), 4.0);
    }
}
