//! `rotator report`: what to ask a sink for, and how to print the answer.
//!
//! Each sink turns a [`ReportQuery`] into one `GROUP BY` query; this module only validates the
//! grouping, and formats rows as a table, CSV or JSON with totals and fill rate.

use std::fmt::Write as _;

use serde::Serialize;

/// Columns a report can be grouped by (whitelisted: they are pasted into SQL).
pub const GROUP_COLUMNS: [&str; 5] = ["campaign", "country", "browser", "os", "device"];

/// The SQL column of a grouping name.
pub fn column(group: &str) -> Option<&'static str> {
    match group {
        "campaign" => Some("campaign_id"),
        "country" => Some("country"),
        "browser" => Some("browser"),
        "os" => Some("os"),
        "device" => Some("device"),
        _ => None,
    }
}

/// What to report.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    /// Start of the range, Unix seconds, inclusive.
    pub from: u32,
    /// End of the range, Unix seconds, exclusive.
    pub to: u32,
    /// Grouping columns (SQL names from [`column`](fn@column)).
    pub by: Vec<&'static str>,
}

impl ReportQuery {
    /// `SELECT` list and `GROUP BY` list for this grouping. Every sink's SQL uses the same text:
    /// `campaign_id` is cast so that all group values come back as strings.
    pub fn group_sql(&self, cast: impl Fn(&str) -> String) -> (String, String) {
        if self.by.is_empty() {
            return (String::new(), String::new());
        }
        let select: Vec<String> = self
            .by
            .iter()
            .map(|c| format!("{} AS {c}", cast(c)))
            .collect();
        (
            format!("{}, ", select.join(", ")),
            format!(" GROUP BY {}", self.by.join(", ")),
        )
    }
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    /// Values of the grouping columns, in order.
    pub group: Vec<String>,
    /// Requests.
    pub requests: u64,
    /// Impressions.
    pub impressions: u64,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// One JSON document.
    Json,
}

fn fill_rate(requests: u64, impressions: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        impressions as f64 / requests as f64
    }
}

/// Renders rows (sorted by requests, descending) and a total.
pub fn render(query: &ReportQuery, mut rows: Vec<ReportRow>, format: Format) -> String {
    let total = ReportRow {
        group: query.by.iter().map(|_| String::new()).collect(),
        requests: rows.iter().fold(0, |t, r| t.saturating_add(r.requests)),
        impressions: rows.iter().fold(0, |t, r| t.saturating_add(r.impressions)),
    };
    if query.by.is_empty() {
        // Without grouping the one row is the total (summed above), printed once.
        rows.clear();
    }
    rows.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.group.cmp(&b.group))
    });
    let names: Vec<&str> = query
        .by
        .iter()
        .map(|c| if *c == "campaign_id" { "campaign" } else { c })
        .collect();
    let mut out = String::new();
    match format {
        Format::Json => {
            let line = |r: &ReportRow| {
                let mut fields: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(&r.group)
                    .map(|(n, v)| (n.to_string(), v.clone().into()))
                    .collect();
                fields.insert("requests".into(), r.requests.into());
                fields.insert("impressions".into(), r.impressions.into());
                fields.insert(
                    "fill_rate".into(),
                    fill_rate(r.requests, r.impressions).into(),
                );
                serde_json::Value::Object(fields)
            };
            let doc = serde_json::json!({
                "from": query.from,
                "to": query.to,
                "rows": rows.iter().map(line).collect::<Vec<_>>(),
                "total": line(&ReportRow { group: Vec::new(), ..total }),
            });
            out = doc.to_string();
            out.push('\n');
        }
        Format::Csv => {
            let header: Vec<&str> = names
                .iter()
                .copied()
                .chain(["requests", "impressions", "fill_rate"])
                .collect();
            let _ = writeln!(out, "{}", header.join(","));
            for r in rows.iter().chain([&total]) {
                let group: Vec<String> = r.group.iter().map(|g| csv_field(g)).collect();
                let mut fields = group;
                if std::ptr::eq(r, &total) && !names.is_empty() {
                    fields[0] = "TOTAL".into();
                }
                fields.extend([
                    r.requests.to_string(),
                    r.impressions.to_string(),
                    format!("{:.4}", fill_rate(r.requests, r.impressions)),
                ]);
                let _ = writeln!(out, "{}", fields.join(","));
            }
        }
        Format::Table => {
            let mut lines: Vec<Vec<String>> = vec![
                names
                    .iter()
                    .map(|s| s.to_string())
                    .chain(["requests".into(), "impressions".into(), "fill rate".into()])
                    .collect(),
            ];
            for r in &rows {
                lines.push(cells(r));
            }
            let mut t = cells(&total);
            if !names.is_empty() {
                t[0] = "TOTAL".into();
            }
            lines.push(t);
            let widths: Vec<usize> = (0..lines[0].len())
                .map(|i| {
                    lines
                        .iter()
                        .map(|l| l[i].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for l in &lines {
                let text: Vec<String> = l
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if i < names.len() {
                            format!("{c:<w$}", w = widths[i])
                        } else {
                            format!("{c:>w$}", w = widths[i])
                        }
                    })
                    .collect();
                let _ = writeln!(out, "{}", text.join("  ").trim_end());
            }
        }
    }
    out
}

fn cells(r: &ReportRow) -> Vec<String> {
    let mut c: Vec<String> = r
        .group
        .iter()
        .map(|g| if g.is_empty() { "-".into() } else { g.clone() })
        .collect();
    c.extend([
        r.requests.to_string(),
        r.impressions.to_string(),
        format!("{:.1}%", 100.0 * fill_rate(r.requests, r.impressions)),
    ]);
    c
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> (ReportQuery, Vec<ReportRow>) {
        let q = ReportQuery {
            from: 0,
            to: 60,
            by: vec!["campaign_id"],
        };
        let r = vec![
            ReportRow {
                group: vec!["0".into()],
                requests: 5,
                impressions: 0,
            },
            ReportRow {
                group: vec!["1".into()],
                requests: 15,
                impressions: 15,
            },
        ];
        (q, r)
    }

    #[test]
    fn table_csv_json() {
        let (q, r) = rows();
        let table = render(&q, r.clone(), Format::Table);
        assert!(table.lines().nth(1).unwrap().starts_with("1 "), "{table}");
        assert!(table.lines().last().unwrap().contains("75.0%"), "{table}");
        let csv = render(&q, r.clone(), Format::Csv);
        assert_eq!(
            csv,
            "campaign,requests,impressions,fill_rate\n1,15,15,1.0000\n0,5,0,0.0000\nTOTAL,20,15,0.7500\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&q, r, Format::Json)).unwrap();
        assert_eq!(json["total"]["requests"], 20);
        assert_eq!(json["rows"][0]["campaign"], "1");
    }

    /// Issue 8 item 3: without `--by` the sink's one row is the total; it used to be cleared
    /// before the total was summed, so every format printed zeros.
    #[test]
    fn issue8_totals_without_grouping() {
        let q = ReportQuery {
            from: 0,
            to: 60,
            by: vec![],
        };
        let r = vec![ReportRow {
            group: vec![],
            requests: 20,
            impressions: 15,
        }];
        assert_eq!(
            render(&q, r.clone(), Format::Table),
            "requests  impressions  fill rate\n      20           15      75.0%\n"
        );
        assert_eq!(
            render(&q, r.clone(), Format::Csv),
            "requests,impressions,fill_rate\n20,15,0.7500\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&q, r, Format::Json)).unwrap();
        assert_eq!(json["rows"], serde_json::json!([]));
        assert_eq!(
            json["total"],
            serde_json::json!({"requests": 20, "impressions": 15, "fill_rate": 0.75})
        );
    }

    #[test]
    fn totals_saturate() {
        let (q, mut r) = rows();
        r[0].requests = u64::MAX;
        let csv = render(&q, r, Format::Csv);
        assert!(
            csv.ends_with(&format!("TOTAL,{},15,0.0000\n", u64::MAX)),
            "{csv}"
        );
    }
}
