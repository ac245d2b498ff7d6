"""Reading an S3 bucket back, whichever server holds it (SeaweedFS, Ceph RGW).

The servers the suite starts let anyone read their one bucket (SeaweedFS without identities
accepts unsigned requests; RGW is given a bucket policy), so listing and hashing objects needs
no request signing here: plain HTTP, stdlib only. hoard itself always signs.
"""

import hashlib
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

from harness import http

_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class Bucket:
    """One bucket at `endpoint` (path-style), readable without credentials."""

    def __init__(self, endpoint, bucket):
        self.endpoint, self.bucket = endpoint, bucket

    def storage_toml(self, prefix):
        """hoard's `[storage]` table for this bucket under `prefix`."""
        return f"""
[storage]
kind = "s3"
endpoint = "{self.endpoint}"
bucket = "{self.bucket}"
prefix = "{prefix}"
credentials_file = "{self.credentials}"
"""

    def has(self, key):
        return http("HEAD", f"{self.endpoint}/{self.bucket}/{key}", timeout=10).status == 200

    def keys(self, prefix):
        """Every key under `prefix` with its size (ListObjectsV2, page by page)."""
        out, token = {}, None
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            resp = http("GET", f"{self.endpoint}/{self.bucket}?{urllib.parse.urlencode(query)}", timeout=30)
            if resp.status != 200:
                raise RuntimeError(f"listing {prefix} answered {resp.status}: {resp.body[:300]!r}")
            root = ET.fromstring(resp.body)
            for item in root.iter(f"{_S3}Contents"):
                out[item.find(f"{_S3}Key").text] = int(item.find(f"{_S3}Size").text)
            if root.findtext(f"{_S3}IsTruncated") != "true":
                return out
            token = root.findtext(f"{_S3}NextContinuationToken")

    def sha256_of(self, key):
        """sha256 hex of the object at `key`, streamed."""
        url = f"{self.endpoint}/{self.bucket}/{urllib.parse.quote(key)}"
        # The harness's http() reads whole bodies; this streams a blob of any size.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        h = hashlib.sha256()
        with opener.open(url, timeout=120) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
