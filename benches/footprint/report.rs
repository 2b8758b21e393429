//! The figures: timings' median and spread, and the one table printed.

use std::fs;
use std::time::Duration;

use crate::Mode;

/// Median and spread of repeated timings.
pub(crate) struct Stats {
    pub(crate) median: Duration,
    min: Duration,
    max: Duration,
    n: usize,
}

impl Stats {
    pub(crate) fn of(mut v: Vec<Duration>) -> Stats {
        v.sort();
        let n = v.len();
        if n == 0 {
            return Stats {
                median: Duration::ZERO,
                min: Duration::ZERO,
                max: Duration::ZERO,
                n,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    pub(crate) fn ms(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{:.1} ms ({:.1}–{:.1}, n={})",
            ms(self.median),
            ms(self.min),
            ms(self.max),
            self.n
        )
    }

    pub(crate) fn s(&self) -> String {
        format!(
            "{:.2} s ({:.2}–{:.2}, n={})",
            self.median.as_secs_f64(),
            self.min.as_secs_f64(),
            self.max.as_secs_f64(),
            self.n
        )
    }
}

pub(crate) struct Row {
    figure: String,
    target: &'static str,
    measured: String,
    result: &'static str,
}

impl Row {
    pub(crate) fn new(figure: impl Into<String>, target: &'static str) -> Row {
        Row {
            figure: figure.into(),
            target,
            measured: String::new(),
            result: "",
        }
    }

    pub(crate) fn measured(mut self, m: String) -> Row {
        self.measured = m;
        self
    }

    pub(crate) fn pass(mut self, ok: bool) -> Row {
        self.result = if ok { "pass" } else { "MISS" };
        self
    }

    pub(crate) fn report(mut self) -> Row {
        self.result = "(report)";
        self
    }
}

pub(crate) struct Table {
    pub(crate) rows: Vec<Row>,
}

impl Table {
    pub(crate) fn print(&self, mode: &Mode, took: Duration) {
        let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!();
        println!(
            "voipbin-tokend footprint ({} mode, {:.0} s; {} CPUs, load {}; loopback stand-in)",
            mode.name,
            took.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load.join(" ")
        );
        let temp = std::env::temp_dir();
        println!(
            "(temp dirs in {}: {})",
            temp.display(),
            crate::measure::fs_of(&temp)
        );
        println!();
        println!("| figure | target | measured (median (min–max)) | result |");
        println!("| --- | --- | --- | --- |");
        for r in &self.rows {
            println!("| {} | {} | {} | {} |", r.figure, r.target, r.measured, r.result);
        }
        let missed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.result == "MISS")
            .map(|r| r.figure.as_str())
            .collect();
        println!();
        if missed.is_empty() {
            println!("all targets met");
        } else {
            println!("missed: {}", missed.join("; "));
        }
    }
}
