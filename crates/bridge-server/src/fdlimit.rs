//! The open-file limit: raised at start from the soft limit to the hard one, because every
//! connection and queue file costs a descriptor, and a flood of connections should meet
//! the connection cap, not "too many open files".

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// What raising the limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdLimit {
    /// The soft limit was raised from `from` to `to` (the hard limit).
    Raised {
        /// The soft limit before.
        from: u64,
        /// The soft limit now.
        to: u64,
    },
    /// The soft limit already is the hard limit (or unlimited): nothing to do.
    Unchanged(Option<u64>),
}

/// Raises the soft open-file limit to the hard limit.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let limit = getrlimit(Resource::Nofile);
    let (Some(from), Some(to)) = (limit.current, limit.maximum) else {
        // An unlimited soft limit needs nothing; an unlimited hard one is no number to
        // ask for (the kernel caps descriptors at `nr_open` anyway), so leave it.
        return Ok(FdLimit::Unchanged(limit.current));
    };
    if from >= to {
        return Ok(FdLimit::Unchanged(Some(from)));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(to),
            maximum: Some(to),
        },
    )?;
    Ok(FdLimit::Raised { from, to })
}

/// Raises the limit and says what came of it.
pub fn raise_and_log() {
    match raise_fd_limit() {
        Ok(FdLimit::Raised { from, to }) => {
            tracing::info!(from, to, "raised the open-file limit to its hard limit");
        }
        Ok(FdLimit::Unchanged(limit)) => tracing::debug!(?limit, "open-file limit unchanged"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        raise_fd_limit().unwrap();
        let limit = getrlimit(Resource::Nofile);
        assert!(limit.maximum.is_none() || limit.current == limit.maximum);
        assert_eq!(
            raise_fd_limit().unwrap(),
            FdLimit::Unchanged(limit.current),
            "a second raise has nothing to do"
        );
    }
}
