//! Between the transport's types and the gateway's queue-operation types (the same
//! things, kept apart so the `Transport` trait does not depend on the gateway crate).

use bridge_server::helper::{self, Problem, Put, Taken};

use super::{Delivery, Incoming, TakeOptions, TakeProblem};

pub fn take_options(opts: &TakeOptions) -> helper::TakeOptions {
    helper::TakeOptions {
        wait: opts.wait,
        max_batch_bytes: opts.max_batch_bytes,
        envelope_limit: opts.envelope_limit,
        include_claimed: opts.include_claimed,
    }
}

pub fn incoming(taken: Taken) -> Incoming {
    Incoming {
        id: taken.id,
        file: taken.file.map_err(|problem| match problem {
            Problem::TooLarge { size } => TakeProblem::TooLarge { size },
            Problem::Unreadable => TakeProblem::Unreadable,
        }),
        previously_claimed: taken.previously_claimed,
    }
}

pub fn delivery(put: Put) -> Delivery {
    match put {
        Put::Delivered => Delivery::Delivered,
        Put::CallerGone => Delivery::CallerGone,
    }
}
