pytest_plugins = ["plantstream.testing.plugin"]
