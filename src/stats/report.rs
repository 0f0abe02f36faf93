//! `rotator report`: what to ask a sink for, and how to print the answer.
//!
//! Each sink turns a [`ReportQuery`] into one `GROUP BY` query; this module only validates the
//! grouping, and formats rows as a table, CSV or JSON with totals and rates.
//!
//! Spend is stored in micro-units (1.0 currency = 1,000,000): the table prints currency units
//! rounded to 2 decimals (half up); CSV and JSON print it exactly, as `spend` (a decimal with 6
//! places; a string in JSON, where a number could lose digits) and `spend_micros` (the integer).
//!
//! Rates: `fill_rate` = impressions / requests, `ctr` = clicks / impressions, `viewable_rate` =
//! viewables / impressions; each is 0 when its denominator is 0 (a number in every format, so a
//! column of a spreadsheet or a JSON field never changes type).

use std::fmt::Write as _;

use serde::Serialize;

/// Columns a report can be grouped by (whitelisted: they are pasted into SQL).
pub const GROUP_COLUMNS: [&str; 7] = [
    "campaign",
    "country",
    "browser",
    "os",
    "device",
    "placement",
    "creative",
];

/// The SQL column of a grouping name.
pub fn column(group: &str) -> Option<&'static str> {
    match group {
        "campaign" => Some("campaign_id"),
        "country" => Some("country"),
        "browser" => Some("browser"),
        "os" => Some("os"),
        "device" => Some("device"),
        "placement" => Some("placement"),
        "creative" => Some("creative_id"),
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
    /// `campaign_id` and `creative_id` are cast so that all group values come back as strings.
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
    /// Viewable impressions.
    pub viewables: u64,
    /// Clicks.
    pub clicks: u64,
    /// Spend, micro-units.
    pub spend: u64,
}

impl ReportRow {
    /// The counts in output order: requests, impressions, viewables, clicks.
    fn counts(&self) -> [u64; 4] {
        [self.requests, self.impressions, self.viewables, self.clicks]
    }

    /// The rates in output order: fill rate, CTR, viewable rate.
    fn rates(&self) -> [f64; 3] {
        [
            ratio(self.impressions, self.requests),
            ratio(self.clicks, self.impressions),
            ratio(self.viewables, self.impressions),
        ]
    }
}

/// Names of the count columns, then of the rate columns (JSON and CSV).
const COUNT_NAMES: [&str; 4] = ["requests", "impressions", "viewables", "clicks"];
const RATE_NAMES: [&str; 3] = ["fill_rate", "ctr", "viewable_rate"];

/// `micros` as an exact decimal of currency units: `12.345678`.
pub fn spend_exact(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// `micros` in currency units rounded half up to 2 decimals: `12.35`.
pub fn spend_cents(micros: u64) -> String {
    let cents = (u128::from(micros) + 5_000) / 10_000;
    format!("{}.{:02}", cents / 100, cents % 100)
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

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Renders rows (sorted by requests, descending) and a total.
pub fn render(query: &ReportQuery, mut rows: Vec<ReportRow>, format: Format) -> String {
    let sum = |f: fn(&ReportRow) -> u64| rows.iter().fold(0u64, |t, r| t.saturating_add(f(r)));
    let total = ReportRow {
        group: query.by.iter().map(|_| String::new()).collect(),
        requests: sum(|r| r.requests),
        impressions: sum(|r| r.impressions),
        viewables: sum(|r| r.viewables),
        clicks: sum(|r| r.clicks),
        spend: sum(|r| r.spend),
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
        .map(|c| match *c {
            "campaign_id" => "campaign",
            "creative_id" => "creative",
            c => c,
        })
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
                for (name, n) in COUNT_NAMES.iter().zip(r.counts()) {
                    fields.insert(name.to_string(), n.into());
                }
                fields.insert("spend".into(), spend_exact(r.spend).into());
                fields.insert("spend_micros".into(), r.spend.into());
                for (name, rate) in RATE_NAMES.iter().zip(r.rates()) {
                    fields.insert(name.to_string(), rate.into());
                }
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
                .chain(COUNT_NAMES)
                .chain(["spend", "spend_micros"])
                .chain(RATE_NAMES)
                .collect();
            let _ = writeln!(out, "{}", header.join(","));
            for r in rows.iter().chain([&total]) {
                let group: Vec<String> = r.group.iter().map(|g| csv_field(g)).collect();
                let mut fields = group;
                if std::ptr::eq(r, &total) && !names.is_empty() {
                    fields[0] = "TOTAL".into();
                }
                fields.extend(r.counts().map(|n| n.to_string()));
                fields.extend([spend_exact(r.spend), r.spend.to_string()]);
                fields.extend(r.rates().map(|rate| format!("{rate:.4}")));
                let _ = writeln!(out, "{}", fields.join(","));
            }
        }
        Format::Table => {
            let mut lines: Vec<Vec<String>> = vec![
                names
                    .iter()
                    .map(|s| s.to_string())
                    .chain(COUNT_NAMES.map(String::from))
                    .chain(["spend".to_string()])
                    .chain(RATE_NAMES.map(|n| n.replace('_', " ")))
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
    c.extend(r.counts().map(|n| n.to_string()));
    c.push(spend_cents(r.spend));
    c.extend(r.rates().map(|rate| format!("{:.1}%", 100.0 * rate)));
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

    fn line(group: &[&str], counts: [u64; 5]) -> ReportRow {
        let [requests, impressions, viewables, clicks, spend] = counts;
        ReportRow {
            group: group.iter().map(|g| g.to_string()).collect(),
            requests,
            impressions,
            viewables,
            clicks,
            spend,
        }
    }

    fn rows() -> (ReportQuery, Vec<ReportRow>) {
        let q = ReportQuery {
            from: 0,
            to: 60,
            by: vec!["campaign_id"],
        };
        let r = vec![
            line(&["0"], [5, 0, 0, 0, 0]),
            line(&["1"], [15, 15, 0, 0, 45_000]),
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
            "campaign,requests,impressions,viewables,clicks,spend,spend_micros,fill_rate,ctr,viewable_rate\n\
             1,15,15,0,0,0.045000,45000,1.0000,0.0000,0.0000\n\
             0,5,0,0,0,0.000000,0,0.0000,0.0000,0.0000\n\
             TOTAL,20,15,0,0,0.045000,45000,0.7500,0.0000,0.0000\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&q, r, Format::Json)).unwrap();
        assert_eq!(json["total"]["requests"], 20);
        assert_eq!(json["total"]["spend"], "0.045000");
        assert_eq!(json["total"]["spend_micros"], 45_000);
        assert_eq!(json["rows"][0]["campaign"], "1");
    }

    /// Issue 10 item 5: placement and creative groupings, viewables, clicks, CTR (clicks /
    /// impressions) and viewable rate (viewables / impressions), 0 without impressions.
    #[test]
    fn issue10_placements_creatives_ctr_and_viewable_rate() {
        let q = ReportQuery {
            from: 0,
            to: 60,
            by: vec!["placement", "creative_id"],
        };
        let r = vec![
            line(&["top", "701"], [40, 20, 10, 2, 0]),
            line(&["side", "0"], [10, 0, 0, 0, 0]),
            line(&["", "0"], [30, 30, 0, 0, 0]),
        ];
        assert_eq!(
            render(&q, r.clone(), Format::Csv),
            "placement,creative,requests,impressions,viewables,clicks,spend,spend_micros,fill_rate,ctr,viewable_rate\n\
             top,701,40,20,10,2,0.000000,0,0.5000,0.1000,0.5000\n\
             ,0,30,30,0,0,0.000000,0,1.0000,0.0000,0.0000\n\
             side,0,10,0,0,0,0.000000,0,0.0000,0.0000,0.0000\n\
             TOTAL,,80,50,10,2,0.000000,0,0.6250,0.0400,0.2000\n"
        );
        assert_eq!(
            render(&q, r.clone(), Format::Table),
            "placement  creative  requests  impressions  viewables  clicks  spend  fill rate    ctr  viewable rate\n\
             top        701             40           20         10       2   0.00      50.0%  10.0%          50.0%\n\
             -          0               30           30          0       0   0.00     100.0%   0.0%           0.0%\n\
             side       0               10            0          0       0   0.00       0.0%   0.0%           0.0%\n\
             TOTAL      -               80           50         10       2   0.00      62.5%   4.0%          20.0%\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&q, r, Format::Json)).unwrap();
        assert_eq!(
            json["rows"][0],
            serde_json::json!({"placement": "top", "creative": "701", "requests": 40,
                "impressions": 20, "viewables": 10, "clicks": 2, "spend": "0.000000",
                "spend_micros": 0, "fill_rate": 0.5, "ctr": 0.1, "viewable_rate": 0.5})
        );
        assert_eq!(json["total"]["ctr"], 0.04);
        assert_eq!(json["total"]["viewable_rate"], 0.2);
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
        let r = vec![line(&[], [20, 15, 3, 6, 1_234_567])];
        assert_eq!(
            render(&q, r.clone(), Format::Table),
            "requests  impressions  viewables  clicks  spend  fill rate    ctr  viewable rate\n\
             \x20     20           15          3       6   1.23      75.0%  40.0%          20.0%\n"
        );
        assert_eq!(
            render(&q, r.clone(), Format::Csv),
            "requests,impressions,viewables,clicks,spend,spend_micros,fill_rate,ctr,viewable_rate\n\
             20,15,3,6,1.234567,1234567,0.7500,0.4000,0.2000\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&q, r, Format::Json)).unwrap();
        assert_eq!(json["rows"], serde_json::json!([]));
        assert_eq!(
            json["total"],
            serde_json::json!({"requests": 20, "impressions": 15, "viewables": 3, "clicks": 6,
                "spend": "1.234567", "spend_micros": 1_234_567, "fill_rate": 0.75, "ctr": 0.4,
                "viewable_rate": 0.2})
        );
    }

    #[test]
    fn totals_saturate() {
        let (q, mut r) = rows();
        r[0].requests = u64::MAX;
        let csv = render(&q, r, Format::Csv);
        assert!(
            csv.ends_with(&format!(
                "TOTAL,{},15,0,0,0.045000,45000,0.0000,0.0000,0.0000\n",
                u64::MAX
            )),
            "{csv}"
        );
    }

    /// Issue 11: spend is exact in CSV and JSON, rounded half up to cents in the table, and its
    /// total saturates like the counts.
    #[test]
    fn issue11_spend_exact_and_in_cents() {
        assert_eq!(spend_exact(0), "0.000000");
        assert_eq!(spend_exact(1), "0.000001");
        assert_eq!(spend_exact(200_000_000), "200.000000");
        assert_eq!(spend_exact(u64::MAX), "18446744073709.551615");
        assert_eq!(spend_cents(0), "0.00");
        assert_eq!(spend_cents(4_999), "0.00");
        assert_eq!(spend_cents(5_000), "0.01");
        assert_eq!(spend_cents(1_994_999), "1.99");
        assert_eq!(spend_cents(1_995_000), "2.00");
        assert_eq!(spend_cents(u64::MAX), "18446744073709.55");
        let q = ReportQuery {
            from: 0,
            to: 60,
            by: vec!["campaign_id"],
        };
        let r = vec![
            line(&["1"], [10, 10, 0, 1, u64::MAX - 1]),
            line(&["2"], [5, 5, 0, 0, 7]),
        ];
        let json: serde_json::Value =
            serde_json::from_str(&render(&q, r.clone(), Format::Json)).unwrap();
        assert_eq!(json["rows"][1]["spend"], "0.000007");
        assert_eq!(json["rows"][1]["spend_micros"], 7);
        assert_eq!(json["total"]["spend_micros"], u64::MAX);
        let table = render(&q, r, Format::Table);
        assert!(table.lines().nth(2).unwrap().contains(" 0.00 "), "{table}");
    }
}
