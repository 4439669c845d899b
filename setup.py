"""Maps the data-flow folders (edge/, producers/, streams/, sinks/, ...) into the `plantstream` namespace.

The repository reads as the data flow at top level while the installed package stays one
namespace (`plantstream.edge`, `plantstream.sinks`, ...) and never claims generic top-level names.
"""

from setuptools import find_packages, setup

STAGES = ("sim", "edge", "producers", "streams", "sinks", "datasets", "monitor", "federation", "bench")

package_dir = {"plantstream": "plantstream"}
packages = ["plantstream"] + [f"plantstream.{p}" for p in find_packages("plantstream", exclude=["*tests*"])]
for stage in STAGES:
    package_dir[f"plantstream.{stage}"] = stage
    packages.append(f"plantstream.{stage}")
    packages += [f"plantstream.{stage}.{p}" for p in find_packages(stage, exclude=["*tests*", "tests"])]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"": ["*.sql", "*.yaml", "*.json", "*.md", "static/**/*", "*.conf"]},
    include_package_data=True,
)
