//! The CPU time Linux accounts to this machine (`/proc/stat`), so that a benchmark can say
//! how much of its run the hypervisor gave to other guests ("steal"): on a shared virtual
//! machine that, more than the code, decides a run's latency tail.

/// CPU time of all CPUs together, in clock ticks, since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    /// The times now; `None` where `/proc/stat` cannot be read or parsed (not Linux).
    pub fn now() -> Option<Self> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The share of CPU time stolen between `earlier` and `self`, in percent; `None` if no
    /// time was accounted in between.
    pub fn steal_pct_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        (total > 0).then(|| 100.0 * steal as f64 / total as f64)
    }
}

/// The share of CPU time stolen from `before` (taken with [`CpuTimes::now`]) until now,
/// in percent; `None` where either reading is missing.
pub fn steal_pct_until_now(before: Option<CpuTimes>) -> Option<f64> {
    CpuTimes::now()?.steal_pct_since(&before?)
}

/// The aggregate `cpu` line of `/proc/stat`: user, nice, system, idle, iowait, irq,
/// softirq, steal (guest time is already inside user and nice).
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (fields.len() == 8).then(|| CpuTimes {
        total: fields.iter().sum(),
        steal: fields[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_share_of_all_cpu_time_between_two_readings() {
        let a = parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 50 0 25 400 5 0 0 20 0 0\n").unwrap();
        let b = parse("cpu  160 0 70 900 10 0 0 60 0 0\n").unwrap();
        // 200 ticks in all, 20 of them stolen.
        assert_eq!(b.steal_pct_since(&a), Some(10.0));
        assert_eq!(a.steal_pct_since(&a), None);
        assert_eq!(a.steal_pct_since(&b), None);
    }

    #[test]
    fn a_stat_without_a_whole_cpu_line_gives_nothing() {
        assert_eq!(parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse("cpu  1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 3 x 5 6 7 8\n"), None);
    }

    #[test]
    fn this_machine_has_cpu_times_that_only_grow() {
        let (Some(a), Some(b)) = (CpuTimes::now(), CpuTimes::now()) else {
            // Not Linux: nothing to read.
            return;
        };
        assert!(b.total >= a.total && b.steal >= a.steal);
    }
}
