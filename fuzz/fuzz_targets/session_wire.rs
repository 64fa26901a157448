//! The session wire between our halves: command lines as the gateway reads them, reply
//! lines as the host reads them (from a hostile sandbox). Parsing never panics, replies
//! keep their bounds, and what parses survives a round trip.
#![no_main]

use bridge_protocol::layout::is_valid_id;
use bridge_protocol::ops::{self, Reply, ReplyLine, MAX_REPLY_ITEMS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let (seq, Ok(command)) = ops::parse_command(data) {
        let line = ops::to_line(&ops::CommandLine { seq, command: command.clone() });
        let (again_seq, again) = ops::parse_command(line.as_bytes());
        assert_eq!(again_seq, seq);
        assert_eq!(again, Ok(command), "a command survives a round trip");
    }
    let Ok(reply) = ops::from_line::<ReplyLine>(data) else {
        return;
    };
    match &reply.reply {
        Reply::Taken(items) => {
            assert!(items.len() <= MAX_REPLY_ITEMS);
            assert!(items.iter().all(|t| is_valid_id(&t.id)), "invalid ids are dropped");
        }
        Reply::Put(results) => assert!(results.len() <= MAX_REPLY_ITEMS),
        Reply::Error(_) => {}
    }
    let line = ops::to_line(&reply);
    let again: ReplyLine = ops::from_line(line.as_bytes()).expect("our own line parses");
    assert_eq!(again, reply, "a reply survives a round trip");
});
