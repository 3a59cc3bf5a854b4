from quickdraft.textstream import TextStream


def feed(stream, chunks):
    return "".join(stream.push(c) for c in chunks) + stream.flush()


def test_multibyte_character_split_across_tokens_is_never_broken():
    s = TextStream()
    euro = "€".encode()  # 3 bytes
    out = [s.push(euro[:1]), s.push(euro[1:2]), s.push(euro[2:] + b"!")]
    assert out == ["", "", "€!"]


def test_stop_string_inside_a_token():
    assert feed(TextStream(["END"]), [b"hello ", b"wENDx", b"more"]) == "hello w"


def test_stop_string_across_tokens_is_held_back_then_cut():
    s = TextStream(["</s>"])
    assert s.push(b"abc<") == "abc"
    assert s.push(b"/") == ""
    assert s.push(b"s>tail") == ""
    assert s.stopped


def test_held_text_that_turns_out_not_to_stop_is_released():
    s = TextStream(["STOP"])
    assert s.push(b"ST") == ""
    assert s.push(b"AR") == "STAR"
    assert s.flush() == ""


def test_flush_releases_a_partial_stop_prefix():
    s = TextStream(["STOP"])
    assert s.push(b"xST") == "x"
    assert s.flush() == "ST"


def test_earliest_of_several_stop_strings_wins():
    assert feed(TextStream(["bb", "a"]), [b"xxbbya"]) == "xx"
