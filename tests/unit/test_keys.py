"""The one Redis key builder: the keys a Lua script touches together share a hash tag,
and no two kinds of key (or two clusters' prefixes) ever name the same key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.redis.keys import Keys, cluster_slot

videos = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=24)
prefixes = st.text("abcxyz0123_", min_size=1, max_size=6)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the first non-empty ``{...}``, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def video_keys(k: Keys, v: str) -> list[str]:
    return [
        k.recent(v), k.meta(v), k.tombstones(v), k.rate(v), k.presence(v), k.mode(v),
        k.snapshot_lease(v), k.snapshot(v), k.stream_of(v), k.moderation_stream_of(v),
    ]  # fmt: skip


@given(prefixes, st.integers(1, 64), videos)
def test_a_videos_keys_and_its_streams_share_one_slot(prefix: str, shards: int, video: str) -> None:
    k = Keys(prefix, shards)
    tags = {hash_tag(key) for key in video_keys(k, video)}
    assert tags == {str(k.slot(video))}
    # The channel too: the append script SPUBLISHes on it, which a cluster allows only in
    # the script's slot.
    assert hash_tag(k.channel(video)) == str(k.slot(video))
    assert {cluster_slot(key) for key in [*video_keys(k, video), k.channel(video)]} == {cluster_slot(f"{{{k.slot(video)}}}")}
    assert 0 <= k.slot(video) < shards
    assert k.stream_of(video) in k.streams() and k.moderation_stream_of(video) in k.moderation_streams()


@given(prefixes, st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=5))
def test_moderation_state_and_one_rate_limit_call_each_share_a_slot(prefix: str, scopes: list[str]) -> None:
    k = Keys(prefix)
    mod = [k.bans(), k.video_settings(), k.moderation_version()] + [k.moderation_log(s) for s in scopes]
    assert {hash_tag(key) for key in mod} == {"mod"}
    group = [k.limiter("user:u1", key) for key in ["user:u1", *scopes]]
    assert {hash_tag(key) for key in group} == {"user:u1"}


@given(prefixes, prefixes, st.integers(1, 8), videos, videos)
def test_no_two_keys_collide(p1: str, p2: str, shards: int, v1: str, v2: str) -> None:
    a, b = Keys(p1, shards), Keys(p2, shards)
    names = [*video_keys(a, v1), a.bans(), a.video_settings(), a.moderation_version(), a.moderation_log("global")]
    assert len(set(names)) == len(names)
    if v1 != v2:
        assert not set(video_keys(a, v1)[:8]) & set(video_keys(a, v2)[:8])
    if p1 != p2:
        assert not set(names) & set([*video_keys(b, v1), b.bans(), b.moderation_version()])


@given(prefixes, st.integers(1, 64), videos)
def test_a_channel_names_its_video(prefix: str, shards: int, video: str) -> None:
    k = Keys(prefix, shards)
    assert k.channel_video(k.channel(video)) == video
    assert Keys(prefix + "x", shards).channel_video(k.channel(video)) is None
    assert k.channel_video(k.recent(video)) is None


def test_cluster_slot_is_redis_clusters() -> None:
    # Values from the Redis Cluster specification and CLUSTER KEYSLOT.
    assert cluster_slot("123456789") == 0x31C3
    assert cluster_slot("foo") == 12182
    assert cluster_slot("{user1000}.following") == cluster_slot("user1000")
    assert cluster_slot("foo{{bar}}zap") == cluster_slot("{bar")
