//! Golden bytes and hostile input for the host↔sandbox contract.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;

fn take_opts() -> TakeOptions {
    TakeOptions {
        wait: Duration::from_millis(1500),
        max_batch_bytes: 9,
        envelope_limit: 7,
        include_claimed: true,
    }
}

fn golden<T>(value: &T, line: &str)
where
    T: Serialize + for<'a> Deserialize<'a> + PartialEq + std::fmt::Debug,
{
    assert_eq!(to_line(value), line);
    assert_eq!(&from_line::<T>(line.as_bytes()).unwrap(), value);
}

#[test]
fn commands_have_exact_bytes() {
    let take = CommandLine {
        seq: 42,
        command: Command::Take(take_opts()),
    };
    golden(
        &take,
        r#"{"seq":42,"take":{"waitMs":1500,"maxBytes":9,"envelopeBytes":7,"includeClaimed":true}}"#,
    );
    let put = CommandLine {
        seq: 3,
        command: Command::Put(vec![
            PutItem {
                id: "a".into(),
                file: vec![0, 255],
            },
            PutItem {
                id: "b".into(),
                file: Vec::new(),
            },
        ]),
    };
    golden(
        &put,
        r#"{"seq":3,"put":[{"id":"a","file":"AP8="},{"id":"b","file":""}]}"#,
    );
    let cancel = CommandLine {
        seq: 0,
        command: Command::Cancel(41),
    };
    golden(&cancel, r#"{"cancel":41}"#);
}

#[test]
fn replies_have_exact_bytes() {
    let taken = ReplyLine {
        seq: 7,
        reply: Reply::Taken(vec![
            Taken {
                id: "r-1".into(),
                file: Ok(b"{}\n".to_vec()),
                previously_claimed: false,
            },
            Taken {
                id: "r-2".into(),
                file: Err(TakeProblem::TooLarge { size: 3 }),
                previously_claimed: true,
            },
            Taken {
                id: "r-3".into(),
                file: Err(TakeProblem::Unreadable),
                previously_claimed: false,
            },
        ]),
    };
    golden(
        &taken,
        concat!(
            r#"{"seq":7,"taken":[{"id":"r-1","claimed":false,"file":"e30K"},"#,
            r#"{"id":"r-2","claimed":true,"tooLarge":3},"#,
            r#"{"id":"r-3","claimed":false,"unreadable":true}]}"#
        ),
    );
    let put = ReplyLine {
        seq: 8,
        reply: Reply::Put(vec![
            PutResult {
                id: "a".into(),
                result: Ok(Delivery::Delivered),
            },
            PutResult {
                id: "b".into(),
                result: Ok(Delivery::CallerGone),
            },
            PutResult {
                id: "c".into(),
                result: Err("disk full".into()),
            },
        ]),
    };
    golden(
        &put,
        concat!(
            r#"{"seq":8,"put":[{"id":"a","result":"delivered"},{"id":"b","result":"gone"},"#,
            r#"{"id":"c","result":"failed","error":"disk full"}]}"#
        ),
    );
    let error = ReplyLine {
        seq: 0,
        reply: Reply::Error("no".into()),
    };
    golden(&error, r#"{"seq":0,"error":"no"}"#);
    assert_eq!(HELLO, r#"{"session":1}"#);
}

#[test]
fn one_shot_lines_have_exact_bytes() {
    let taken = Taken {
        id: "a-1".into(),
        file: Ok(vec![0, 255, 10]),
        previously_claimed: true,
    };
    golden(&taken, r#"{"id":"a-1","claimed":true,"file":"AP8K"}"#);
    let item = PutItem {
        id: "a-1".into(),
        file: b"x".to_vec(),
    };
    golden(&item, r#"{"id":"a-1","file":"eA=="}"#);
}

#[test]
fn hostile_taken_items_are_dropped_or_marked() {
    let line = br#"{"seq":1,"taken":[{"id":"../x","claimed":false,"file":""},{"id":"ok","claimed":false,"file":"%%"}]}"#;
    let parsed: ReplyLine = from_line(line).unwrap();
    assert_eq!(
        parsed.reply,
        Reply::Taken(vec![Taken {
            id: "ok".into(),
            file: Err(TakeProblem::Unreadable),
            previously_claimed: false,
        }])
    );
    assert!(from_line::<Taken>(br#"{"id":"../x","claimed":false}"#).is_err());
    assert!(
        from_line::<Taken>(br#"{"id":"a","file":""}"#).is_err(),
        "claimed is required"
    );
    // Nonsense in the file fields of an item with a valid id: unreadable, not dropped.
    let line = br#"{"seq":2,"taken":[{"id":"a","claimed":false,"tooLarge":"big"},{"id":"b","claimed":true,"unreadable":7,"file":1}]}"#;
    let parsed: ReplyLine = from_line(line).unwrap();
    let Reply::Taken(items) = parsed.reply else {
        panic!("{parsed:?}")
    };
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|t| t.file == Err(TakeProblem::Unreadable)));
    // Without a claim flag the item is not ours to act on: dropped, the rest kept.
    let line = br#"{"seq":3,"taken":[{"id":"a"},{"id":"b","claimed":false,"file":""}]}"#;
    let parsed: ReplyLine = from_line(line).unwrap();
    assert!(matches!(parsed.reply, Reply::Taken(ref t) if t.len() == 1 && t[0].id == "b"));
    // Non-canonical base64 is not the bytes the sandbox claims to have read.
    let sloppy: Taken = from_line(br#"{"id":"a","claimed":false,"file":"AP9="}"#).unwrap();
    assert_eq!(sloppy.file, Err(TakeProblem::Unreadable));
}

#[test]
fn malformed_lines_are_errors_not_panics() {
    for line in [
        &b"garbage"[..],
        br#"{"seq":1}"#,
        br#"{"seq":1,"taken":"x"}"#,
        br#"{"seq":-1,"error":"x"}"#,
    ] {
        assert!(from_line::<ReplyLine>(line).is_err(), "{line:?}");
    }
    let failed: PutResult = from_line(br#"{"id":"a","result":"failed"}"#).unwrap();
    assert_eq!(failed.result, Err("failed".into()));
    // An outcome this host does not know is not a delivery.
    let odd: PutResult = from_line(br#"{"id":"a","result":"maybe"}"#).unwrap();
    assert_eq!(odd.result, Err("failed".into()));
}

#[test]
fn unreadable_commands_keep_their_seq_for_the_error_reply() {
    let (seq, command) = parse_command(br#"{"seq":3,"take":{"waitMs":1}}"#);
    assert_eq!(seq, 3);
    assert!(command.is_err());
    let (seq, command) = parse_command(br#"{"seq":4,"put":[{"id":"a","file":"%%"}]}"#);
    assert_eq!(seq, 4);
    assert!(command.is_err());
    assert_eq!(parse_command(b"nonsense").0, 0);
    assert!(parse_command(br#"{"seq":5,"dance":{}}"#).1.is_err());
    let (seq, command) =
        parse_command(br#"{"seq":6,"take":{"waitMs":1,"maxBytes":2,"envelopeBytes":3}}"#);
    assert_eq!(seq, 6);
    assert!(matches!(command, Ok(Command::Take(o)) if !o.include_claimed));
}

#[test]
fn a_reply_of_more_items_than_the_bound_is_refused() {
    let item = r#"{"id":"a","claimed":false}"#;
    let line = |n: usize, key: &str, item: &str| {
        format!(r#"{{"seq":1,"{key}":[{}]}}"#, vec![item; n].join(","))
    };
    let full: ReplyLine = from_line(line(MAX_REPLY_ITEMS, "taken", item).as_bytes()).unwrap();
    assert!(matches!(full.reply, Reply::Taken(t) if t.len() == MAX_REPLY_ITEMS));
    let over = line(MAX_REPLY_ITEMS + 1, "taken", item);
    let err = from_line::<ReplyLine>(over.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    // Items that would be dropped as invalid still count.
    assert!(from_line::<ReplyLine>(line(MAX_REPLY_ITEMS + 1, "taken", "{}").as_bytes()).is_err());
    let result = r#"{"id":"a","result":"delivered"}"#;
    assert!(from_line::<ReplyLine>(line(MAX_REPLY_ITEMS, "put", result).as_bytes()).is_ok());
    assert!(from_line::<ReplyLine>(line(MAX_REPLY_ITEMS + 1, "put", result).as_bytes()).is_err());
}

#[test]
fn reply_lines_are_bounded_by_what_the_command_asked_for() {
    let take = Command::Take(take_opts());
    let small = reply_line_limit(&take);
    assert!(small < 2 * 1024 * 1024, "{small}");
    let big = Command::Take(TakeOptions {
        max_batch_bytes: 16 << 20,
        envelope_limit: 8 << 20,
        ..take_opts()
    });
    assert!(reply_line_limit(&big) >= (24 << 20) / 3 * 4);
    let put = |n| {
        let item = PutItem {
            id: "a".into(),
            file: Vec::new(),
        };
        reply_line_limit(&Command::Put(vec![item; n]))
    };
    assert!(put(1) < put(2));
    assert_eq!(put(MAX_REPLY_ITEMS), put(MAX_REPLY_ITEMS + 5));
}

#[test]
fn a_reply_line_needs_one_reply_and_a_seq() {
    assert!(from_line::<ReplyLine>(br#"{"seq":1,"error":"a","taken":[]}"#).is_err());
    assert!(from_line::<ReplyLine>(br#"{"error":"a"}"#).is_err());
    let odd: ReplyLine = from_line(br#"{"seq":2,"extra":[1,2],"error":"a"}"#).unwrap();
    assert_eq!(odd.reply, Reply::Error("a".into()));
}
