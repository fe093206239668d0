"""Redis itself: how the broker connects (plain, Sentinel, Cluster), its Lua scripts and key-layout migrations."""
