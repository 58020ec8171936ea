//! The kernel's CPU list format, as found in sysfs (`online`, `cpulist`,
//! `shared_cpu_list`) and cgroup `cpuset.cpus` files.
//!
//! ```text
//! list  := ""  |  item ( "," item )*        (surrounding whitespace and a trailing newline are ignored)
//! item  := N   |  N "-" M                   (N <= M, decimal)
//! e.g.  "0-3,8,10-11\n"  ==  {0, 1, 2, 3, 8, 10, 11}
//! ```
//!
//! [`parse_cpu_list`] accepts any order and overlap and returns the set sorted
//! and deduplicated; [`format_cpu_list`] writes the canonical form (ascending,
//! maximal ranges), so `parse(format(s)) == s` for every set `s`.

/// Largest CPU number accepted (the kernel's `NR_CPUS` tops out at 8192; the
/// margin guards against allocating for a corrupt `0-4294967295`).
pub const MAX_CPU: usize = 1 << 16;

/// Why a CPU list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// An item is neither `N` nor `N-M` with decimal numbers.
    #[error("cpu list {list:?}: item {item:?} is not `N` or `N-M`")]
    BadItem {
        /// The whole list.
        list: String,
        /// The offending item.
        item: String,
    },
    /// A range whose end is below its start.
    #[error("cpu list {list:?}: range {start}-{end} is reversed")]
    ReversedRange {
        /// The whole list.
        list: String,
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
    },
    /// A CPU number above [`MAX_CPU`].
    #[error("cpu list {list:?}: cpu {cpu} exceeds the supported maximum {max}")]
    TooLarge {
        /// The whole list.
        list: String,
        /// The offending number.
        cpu: usize,
        /// [`MAX_CPU`].
        max: usize,
    },
}

/// Parses a kernel CPU list (`"0-3,8,10-11"`) into a sorted, deduplicated set.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, CpuListError> {
    let trimmed = list.trim();
    let mut cpus = Vec::new();
    if trimmed.is_empty() {
        return Ok(cpus);
    }
    let bad_item = |item: &str| CpuListError::BadItem {
        list: trimmed.to_owned(),
        item: item.to_owned(),
    };
    let number = |item: &str, text: &str| -> Result<usize, CpuListError> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_item(item));
        }
        let cpu: usize = text.parse().map_err(|_| bad_item(item))?;
        if cpu > MAX_CPU {
            return Err(CpuListError::TooLarge {
                list: trimmed.to_owned(),
                cpu,
                max: MAX_CPU,
            });
        }
        Ok(cpu)
    };
    for item in trimmed.split(',') {
        match item.split_once('-') {
            None => cpus.push(number(item, item)?),
            Some((start, end)) => {
                let (start, end) = (number(item, start)?, number(item, end)?);
                if end < start {
                    return Err(CpuListError::ReversedRange {
                        list: trimmed.to_owned(),
                        start,
                        end,
                    });
                }
                cpus.extend(start..=end);
            }
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats a set of CPUs in the canonical kernel form (`"0-3,8,10-11"`).
/// The input may be unsorted and contain duplicates.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sysfs_examples() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("5,1-2,2").unwrap(), vec![1, 2, 5]);
    }

    #[test]
    fn rejects_malformed_lists() {
        assert!(matches!(
            parse_cpu_list("0-"),
            Err(CpuListError::BadItem { .. })
        ));
        assert!(matches!(
            parse_cpu_list("a"),
            Err(CpuListError::BadItem { .. })
        ));
        assert!(matches!(
            parse_cpu_list("1,,2"),
            Err(CpuListError::BadItem { .. })
        ));
        assert!(matches!(
            parse_cpu_list("-1"),
            Err(CpuListError::BadItem { .. })
        ));
        assert_eq!(
            parse_cpu_list("3-1"),
            Err(CpuListError::ReversedRange {
                list: "3-1".into(),
                start: 3,
                end: 1
            })
        );
        assert!(matches!(
            parse_cpu_list("0-4294967295"),
            Err(CpuListError::TooLarge { .. })
        ));
    }

    #[test]
    fn formats_maximal_ranges() {
        assert_eq!(format_cpu_list(&[11, 0, 1, 2, 3, 8, 10, 3]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
        assert_eq!(format_cpu_list(&[7]), "7");
    }

    proptest! {
        #[test]
        fn round_trip(set in proptest::collection::btree_set(0usize..512, 0..64)) {
            let cpus: Vec<usize> = set.into_iter().collect();
            let text = format_cpu_list(&cpus);
            prop_assert_eq!(parse_cpu_list(&text).unwrap(), cpus);
        }

        #[test]
        fn any_valid_spelling_parses_to_the_model(
            items in proptest::collection::vec((0usize..300, 0usize..8, any::<bool>()), 0..16)
        ) {
            // Model: the union of the items; spelled with arbitrary order and overlap.
            let mut model = std::collections::BTreeSet::new();
            let spelled: Vec<String> = items.iter().map(|&(start, len, as_range)| {
                if as_range {
                    model.extend(start..=start + len);
                    format!("{start}-{}", start + len)
                } else {
                    model.insert(start);
                    start.to_string()
                }
            }).collect();
            let parsed = parse_cpu_list(&spelled.join(",")).unwrap();
            prop_assert_eq!(&parsed, &model.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(parse_cpu_list(&format_cpu_list(&parsed)).unwrap(), parsed);
        }
    }
}
