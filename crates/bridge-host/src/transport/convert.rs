//! Between the transport's types and the gateway's queue-operation types (the same
//! things, kept apart so the `Transport` trait does not depend on the gateway crate).

use bridge_server::helper::{self, Problem, Put, Taken};

use super::{Delivery, Incoming, Outgoing, TakeOptions, TakeProblem, TransportError};

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

/// Pairs each response with its put result: a result missing or failed is an error.
pub fn deliveries(
    responses: &[Outgoing],
    results: Vec<(String, Result<Put, String>)>,
) -> Result<Vec<(String, Delivery)>, TransportError> {
    responses
        .iter()
        .map(|r| match results.iter().find(|(id, _)| *id == r.id) {
            Some((_, Ok(put))) => Ok((r.id.clone(), delivery(*put))),
            Some((_, Err(why))) => Err(TransportError::Garbled(format!("put {}: {why}", r.id))),
            None => Err(TransportError::Garbled(format!(
                "put gave no result for {}",
                r.id
            ))),
        })
        .collect()
}
