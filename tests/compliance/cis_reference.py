#!/usr/bin/env python3
"""cis_reference.py — an independent reading of the rule pack's controls.

Each rule of handlers/compliance/rules is written here again as a Python
predicate from its control's audit procedure (CIS AWS Foundations Benchmark
v3.0, or the rule's title for the SOC 2 / PCI-only rules) and the AWS API
shapes of the resource documents — not translated from the rule's condition.
The rule pack and the handler are checked against it, so neither the
expected findings nor the documents' labels come from the implementation:

  cis_reference.py labels RULES_DIR
      every rules/tests document evaluates as labelled (compliant or not)
  cis_reference.py findings RULES_DIR INVENTORY.ndjson
      prints "account region resource rule" per failing (rule, resource)
      pair, sorted bytewise: tests/compliance/fixtures/inventory.expected
  cis_reference.py fuzz RULES_DIR N SEED
      N random documents per resource type, as discovery NDJSON

Readings where the control leaves a choice, and the choice made:
  - A required attribute that is absent (or null) fails the check: an
    incomplete document cannot show compliance — a key of unknown Status may
    be active, a policy of unknown ARN may be AWSCloudShellFullAccess, a
    group of unknown name may be the default one, an unreadable date is not
    old enough. An absent optional list is empty. A null value counts as
    absent for "is there a …" (exists) but as a value (not equal to any
    string) when compared, as the condition language does.
  - Ages are days before the event time 2026-06-01T00:00:00Z.
  - A policy statement's Action/Resource/Principal.AWS may be a string or
    a list; a Statement may be one object.
  - "All traffic" (IpProtocol / Protocol -1) covers every port.
  - A trail's KmsKeyId is a KMS key ARN (DescribeTrails returns the full
    ARN); anything else does not show encryption.

`fuzz RULES_DIR N SEED` prints N-per-type random mutations of the rules/tests
documents as discovery NDJSON (reference.sh runs the handler on them and
compares its findings with this reading's).
"""
import datetime
import glob
import json
import os
import sys

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
MISSING_AGE = float('inf')  # an unknown date is older than any limit


def age_days(s):
    if isinstance(s, (int, float)) and not isinstance(s, bool):  # epoch seconds
        return (NOW.timestamp() - s) / 86400
    if not isinstance(s, str):
        return MISSING_AGE
    try:
        t = datetime.datetime.fromisoformat(s.replace('Z', '+00:00'))
    except ValueError:
        return MISSING_AGE
    return (NOW - t).total_seconds() / 86400


def get(d, path, default=None):
    for p in path.split('.'):
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


ABSENT = object()  # an attribute the document does not have (null is a value)


def val(d, path):
    v = get(d, path, ABSENT)
    return v


def as_list(x):
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def objs(x):
    """The elements of a list (or of a lone value) as objects: an element of
    another kind has none of the attributes a control looks at."""
    return [e if isinstance(e, dict) else {} for e in as_list(x)]


def obj(x):
    return x if isinstance(x, dict) else {}


def is_num(x, v):
    """x is the number v (a boolean is not a number)."""
    return is_int(x) and x == v


# ------------------------------------------------------------------ IAM

def known_inactive(k):
    """A key whose Status is known and is not Active (unknown: may be active)."""
    return k.get('Status', ABSENT) not in (ABSENT, 'Active')


def active_keys(a):
    return [k for k in objs(a.get('AccessKeyMetadata')) if k.get('Status') == 'Active']


def key_unused_45d(k):
    """1.12: an active key not used for 45 days (never used: since created)."""
    last = get(k, 'AccessKeyLastUsed.LastUsedDate')
    return age_days(last if last is not None else k.get('CreateDate')) > 45


def password_unused_45d(a):
    """1.12: a console password not used for 45 days (never used: since created)."""
    if a.get('LoginProfile') is None:
        return False
    last = get(a, 'User.PasswordLastUsed')
    if last is not None and age_days(last) <= 45:
        return False
    return age_days(get(a, 'LoginProfile.CreateDate')) > 45


def password_policy(a):
    return obj(a.get('PasswordPolicy'))


def full_admin(a):
    """1.16: a policy allowing Action * on Resource *, unless known to be unattached."""
    if is_num(get(a, 'Policy.AttachmentCount'), 0):
        return False
    for s in objs(get(a, 'PolicyVersion.Document.Statement')):
        if s.get('Effect') == 'Allow' and '*' in as_list(s.get('Action')) and '*' in as_list(s.get('Resource')):
            return True
    return False


# ------------------------------------------------------------------ S3

def everyone(principal):
    return principal == '*' or (isinstance(principal, dict) and '*' in as_list(principal.get('AWS')))


def statements(a):
    return objs(get(a, 'Policy.Statement'))


def denies_http(a):
    """2.1.1: a Deny for everyone when aws:SecureTransport is false."""
    return any(s.get('Effect') == 'Deny' and everyone(s.get('Principal')) and
               obj(get(s, 'Condition.Bool')).get('aws:SecureTransport') in ('false', False)
               for s in statements(a))


def public_policy(a):
    return any(s.get('Effect') == 'Allow' and everyone(s.get('Principal')) and s.get('Condition') is None
               for s in statements(a))


PAB = ('BlockPublicAcls', 'IgnorePublicAcls', 'BlockPublicPolicy', 'RestrictPublicBuckets')

# ------------------------------------------------------------------ CloudTrail


def records_management(t):
    """3.1: management events, read and write."""
    if any(e.get('IncludeManagementEvents') is True and e.get('ReadWriteType') == 'All'
           for e in objs(t.get('EventSelectors'))):
        return True
    return any(any(f.get('Field') == 'eventCategory' and 'Management' in as_list(f.get('Equals'))
                   for f in objs(s.get('FieldSelectors')))
               for s in objs(t.get('AdvancedEventSelectors')))


def records_s3_objects(t, write):
    """3.8 (write) / 3.9 (read): S3 object-level data events."""
    mode = 'WriteOnly' if write else 'ReadOnly'
    for e in objs(t.get('EventSelectors')):
        if e.get('ReadWriteType') in ('All', mode) and any(
                d.get('Type') == 'AWS::S3::Object' for d in objs(e.get('DataResources'))):
            return True
    for s in objs(t.get('AdvancedEventSelectors')):
        fs = objs(s.get('FieldSelectors'))
        if not any(f.get('Field') == 'resources.type' and 'AWS::S3::Object' in as_list(f.get('Equals'))
                   for f in fs):
            continue
        # readOnly "true" logs reads only, "false" writes only; absent: both
        excluded = 'true' if write else 'false'
        if not any(f.get('Field') == 'readOnly' and excluded in as_list(f.get('Equals')) for f in fs):
            return True
    return False

# ------------------------------------------------------------------ network


def world_v4(p):
    return any(r.get('CidrIp') == '0.0.0.0/0' for r in objs(p.get('IpRanges')))


def world_v6(p):
    return any(r.get('CidrIpv6') == '::/0' for r in objs(p.get('Ipv6Ranges')))


def sg_reaches(p, port):
    proto = str(p.get('IpProtocol'))
    if proto == '-1':
        return True
    return proto in ('tcp', '6') and is_int(p.get('FromPort')) and is_int(p.get('ToPort')) and \
        p['FromPort'] <= port <= p['ToPort']


def sg_open(a, world, ports):
    return any(world(p) and any(sg_reaches(p, port) for port in ports)
               for p in objs(a.get('IpPermissions')))


def sg_all_traffic(a, world):
    return any(world(p) and str(p.get('IpProtocol')) == '-1' for p in objs(a.get('IpPermissions')))


def nacl_open(a, port):
    """5.1: an ingress allow from anywhere reaching the port over TCP."""
    for e in objs(a.get('Entries')):
        if e.get('Egress') is not False or e.get('RuleAction') != 'allow':
            continue
        if e.get('CidrBlock') != '0.0.0.0/0' and e.get('Ipv6CidrBlock') != '::/0':
            continue
        proto = str(e.get('Protocol'))
        if proto == '-1':
            return True
        f, t = get(e, 'PortRange.From'), get(e, 'PortRange.To')
        if proto == '6' and is_int(f) and is_int(t) and f <= port <= t:
            return True
    return False


DB_PORTS = (3306, 5432, 1433, 1521, 27017, 6379)

# ------------------------------------------------------------------ the pack: rule -> fails(attributes)

FAILS = {
    # 1.4-1.9: the account summary, root credential report, password policy
    'cis-aws-1.4-root-no-access-keys': lambda a: not is_num(get(a, 'SummaryMap.AccountAccessKeysPresent'), 0),
    'cis-aws-1.5-root-mfa': lambda a: not is_num(get(a, 'SummaryMap.AccountMFAEnabled'), 1),
    'cis-aws-1.6-root-hardware-mfa': lambda a: not is_num(get(a, 'SummaryMap.AccountMFAEnabled'), 1) or any(
        str(d.get('SerialNumber', '')).endswith(':mfa/root-account-mfa-device')
        for d in objs(a.get('VirtualMFADevices'))),
    'cis-aws-1.7-root-not-used': lambda a: (lambda used: not (used is None or used in (
        'N/A', 'no_information') or age_days(used) != MISSING_AGE and age_days(used) > 90))(
        get(a, 'CredentialReportRoot.password_last_used')),
    'cis-aws-1.8-password-min-length': lambda a: not (
        is_int(password_policy(a).get('MinimumPasswordLength')) and password_policy(a)['MinimumPasswordLength'] >= 14),
    'cis-aws-1.9-password-reuse': lambda a: not (
        is_int(password_policy(a).get('PasswordReusePrevention')) and password_policy(a)['PasswordReusePrevention'] >= 24),
    'iam-password-max-age-90': lambda a: not (password_policy(a).get('ExpirePasswords') is True and is_int(
        password_policy(a).get('MaxPasswordAge')) and password_policy(a)['MaxPasswordAge'] <= 90),
    'iam-password-require-lowercase': lambda a: password_policy(a).get('RequireLowercaseCharacters') is not True,
    'iam-password-require-numbers': lambda a: password_policy(a).get('RequireNumbers') is not True,
    'iam-password-require-symbols': lambda a: password_policy(a).get('RequireSymbols') is not True,
    'iam-password-require-uppercase': lambda a: password_policy(a).get('RequireUppercaseCharacters') is not True,
    # 1.10-1.15: users
    'cis-aws-1.10-user-console-mfa': lambda a: a.get('LoginProfile') is not None and not as_list(a.get('MFADevices')),
    'cis-aws-1.12-user-password-unused-45d': password_unused_45d,
    'cis-aws-1.12-user-access-key-unused-45d': lambda a: any(
        not known_inactive(k) and key_unused_45d(k) for k in objs(a.get('AccessKeyMetadata'))),
    'cis-aws-1.13-user-one-active-key': lambda a: len(active_keys(a)) > 1,
    'cis-aws-1.14-user-access-key-rotated-90d': lambda a: any(
        not known_inactive(k) and age_days(k.get('CreateDate')) > 90 for k in objs(a.get('AccessKeyMetadata'))),
    'cis-aws-1.15-user-permissions-via-groups': lambda a: bool(as_list(a.get('AttachedPolicies')) or as_list(a.get('PolicyNames'))),
    # 1.16, 1.22: policies; 1.18, 5.6: instances
    'cis-aws-1.16-no-full-admin-policy': full_admin,
    'cis-aws-1.22-cloudshell-full-access': lambda a: val(a, 'Policy.Arn') in (
        ABSENT, 'arn:aws:iam::aws:policy/AWSCloudShellFullAccess') and not is_num(get(a, 'Policy.AttachmentCount'), 0),
    'cis-aws-1.18-ec2-instance-role': lambda a: get(a, 'IamInstanceProfile.Arn') is None and get(a, 'State.Name') != 'terminated',
    'cis-aws-5.6-ec2-imdsv2': lambda a: get(a, 'MetadataOptions.HttpTokens') != 'required'
    and get(a, 'MetadataOptions.HttpEndpoint') != 'disabled',
    # 2.1: S3
    'cis-aws-2.1.1-s3-deny-http': lambda a: not denies_http(a),
    'cis-aws-2.1.2-s3-mfa-delete': lambda a: get(a, 'Versioning.MFADelete') != 'Enabled',
    'cis-aws-2.1.4-s3-block-public-access': lambda a: not all(
        get(a, 'PublicAccessBlockConfiguration.' + k) is True for k in PAB),
    's3-access-logging': lambda a: get(a, 'LoggingEnabled.TargetBucket') is None,
    's3-default-encryption': lambda a: not any(
        get(r, 'ApplyServerSideEncryptionByDefault.SSEAlgorithm') in ('AES256', 'aws:kms', 'aws:kms:dsse')
        for r in objs(get(a, 'ServerSideEncryptionConfiguration.Rules'))),
    's3-no-public-policy': public_policy,
    's3-versioning-enabled': lambda a: get(a, 'Versioning.Status') != 'Enabled',
    # 2.2-2.4: EBS, RDS, EFS
    'cis-aws-2.2.1-ebs-default-encryption': lambda a: a.get('EbsEncryptionByDefault') is not True,
    'cis-aws-2.3.1-rds-encrypted': lambda a: a.get('StorageEncrypted') is not True,
    'cis-aws-2.3.2-rds-auto-minor-upgrade': lambda a: a.get('AutoMinorVersionUpgrade') is not True,
    'cis-aws-2.3.3-rds-not-public': lambda a: a.get('PubliclyAccessible') is not False,
    'rds-backup-retention-7d': lambda a: not (is_int(a.get('BackupRetentionPeriod')) and a['BackupRetentionPeriod'] >= 7),
    'rds-deletion-protection': lambda a: a.get('DeletionProtection') is not True,
    'cis-aws-2.4.1-efs-encrypted': lambda a: a.get('Encrypted') is not True,
    # 3: logging
    'cis-aws-3.1-cloudtrail-multi-region': lambda a: not (
        a.get('IsMultiRegionTrail') is True and a.get('IsLogging') is True and records_management(a)),
    'cis-aws-3.2-cloudtrail-log-validation': lambda a: a.get('LogFileValidationEnabled') is not True,
    'cis-aws-3.5-cloudtrail-kms': lambda a: not (isinstance(a.get('KmsKeyId'), str) and a['KmsKeyId'].startswith('arn:aws:kms:')),
    'cis-aws-3.8-cloudtrail-s3-object-write': lambda a: not records_s3_objects(a, write=True),
    'cis-aws-3.9-cloudtrail-s3-object-read': lambda a: not records_s3_objects(a, write=False),
    'cis-aws-3.3-config-recorder': lambda a: not (a.get('recording') is True and get(
        a, 'recordingGroup.allSupported') is True and a.get('lastStatus', ABSENT) not in (ABSENT, 'FAILURE')),
    'cis-aws-3.6-kms-rotation': lambda a: not (get(a, 'KeyMetadata.KeyManager') == 'AWS' or val(
        a, 'KeyMetadata.KeySpec') not in (ABSENT, 'SYMMETRIC_DEFAULT') or val(a, 'KeyMetadata.KeyState') not in (
        ABSENT, 'Enabled') or a.get('KeyRotationEnabled') is True),
    'cis-aws-3.7-vpc-flow-logs': lambda a: not any(
        f.get('FlowLogStatus') == 'ACTIVE' and f.get('TrafficType') in ('REJECT', 'ALL') for f in objs(a.get('FlowLogs'))),
    # 5: networking
    'cis-aws-5.1-nacl-ssh': lambda a: nacl_open(a, 22),
    'cis-aws-5.1-nacl-rdp': lambda a: nacl_open(a, 3389),
    'cis-aws-5.2-sg-ssh-ipv4': lambda a: sg_open(a, world_v4, (22,)),
    'cis-aws-5.2-sg-rdp-ipv4': lambda a: sg_open(a, world_v4, (3389,)),
    'cis-aws-5.2-sg-all-ports-ipv4': lambda a: sg_all_traffic(a, world_v4),
    'cis-aws-5.3-sg-ssh-ipv6': lambda a: sg_open(a, world_v6, (22,)),
    'cis-aws-5.3-sg-rdp-ipv6': lambda a: sg_open(a, world_v6, (3389,)),
    'cis-aws-5.3-sg-all-ports-ipv6': lambda a: sg_all_traffic(a, world_v6),
    'cis-aws-5.4-default-sg-restricts-all': lambda a: a.get('GroupName', ABSENT) in (ABSENT, 'default') and bool(
        as_list(a.get('IpPermissions')) or as_list(a.get('IpPermissionsEgress'))),
    'sg-db-ports-ipv4': lambda a: sg_open(a, world_v4, DB_PORTS),
}


def pack(rules_dir):
    types = {}
    for f in glob.glob(os.path.join(rules_dir, '*.json')):
        with open(f) as fh:
            r = json.load(fh)
        types[r['id']] = r['resource_type']
    if set(types) != set(FAILS):
        sys.exit('the pack and this reading differ in rules: %s' % sorted(set(types) ^ set(FAILS)))
    return types


def labels(rules_dir):
    pack(rules_dir)
    bad = 0
    for f in sorted(glob.glob(os.path.join(rules_dir, 'tests', '*.json'))):
        with open(f) as fh:
            t = json.load(fh)
        for label, want in (('compliant', False), ('non_compliant', True)):
            for i, a in enumerate(t.get(label, [])):
                if FAILS[t['rule']](a) != want:
                    print('%s: %s[%d] reads as %s' % (t['rule'], label, i,
                          'failing' if not want else 'passing'))
                    bad += 1
    return 1 if bad else 0


def findings(rules_dir, inventory):
    types = pack(rules_dir)
    out = []
    with open(inventory) as fh:
        for line in fh:
            p = json.loads(line)['payload']
            for res in p['resources']:
                for rid, typ in types.items():
                    if typ == res['resource_type'] and FAILS[rid](res.get('attributes') or {}):
                        out.append('%s %s %s %s' % (p['account_id'], p['region'], res['resource_id'], rid))
    sys.stdout.buffer.write(b''.join(sorted(s.encode() + b'\n' for s in out)))
    return 0



# ------------------------------------------------------------------ random documents

VALUES = [True, False, None, 0, 1, 7, 14, 22, 24, 90, 3389, 5432, '-1', 'tcp', '6', '17', '*', '',
          '0.0.0.0/0', '::/0', '10.0.0.0/8', 'Enabled', 'Disabled', 'All', 'ReadOnly', 'WriteOnly',
          'ACTIVE', 'REJECT', 'ALL', 'ACCEPT', 'Allow', 'Deny', 'true', 'false', 'N/A', 'no_information',
          '2026-05-30T00:00:00Z', '2026-04-10T00:00:00Z', '2025-01-01T00:00:00Z', 'required', 'optional',
          'disabled', 'CUSTOMER', 'AWS', 'SYMMETRIC_DEFAULT', 'RSA_2048', 'default', 'AWS::S3::Object',
          'Management', 'resources.type', 'readOnly', 'eventCategory', 'FAILURE', 'SUCCESS', 'aws:kms',
          'AES256', 'arn:aws:iam::aws:policy/AWSCloudShellFullAccess',
          'arn:aws:iam::111122223333:mfa/root-account-mfa-device', 'arn:aws:kms:us-east-1:1:key/k', [], {}]


def mutate(rng, x):
    """Drops keys and list elements, swaps values for others of any kind,
    wraps scalars in lists, duplicates elements: documents near the labelled
    ones, including malformed ones (missing, null, wrong kinds)."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            r = rng.random()
            if r < 0.08:
                continue
            out[k] = rng.choice(VALUES) if r < 0.16 else mutate(rng, v) if r < 0.5 else v
        return out
    if isinstance(x, list):
        out = [mutate(rng, e) for e in x if rng.random() > 0.1]
        if out and rng.random() < 0.2:
            out.append(rng.choice(out))
        return out
    r = rng.random()
    return rng.choice(VALUES) if r < 0.3 else [x] if r < 0.33 else x


def fuzz(rules_dir, per_type, seed):
    import random
    rng = random.Random(seed)
    docs = {}
    for f in sorted(glob.glob(os.path.join(rules_dir, '*.json'))):
        with open(f) as fh:
            r = json.load(fh)
        with open(os.path.join(rules_dir, 'tests', os.path.basename(f))) as fh:
            t = json.load(fh)
        docs.setdefault(r['resource_type'], []).extend(t['compliant'] + t['non_compliant'])
    for typ, ds in sorted(docs.items()):
        res = [{'resource_id': '%s-%d' % (typ, i), 'resource_type': typ,
                'attributes': mutate(rng, rng.choice(ds))} for i in range(per_type)]
        print(json.dumps({'type': 'discovery', 'tenant': 'acme', 'time': '2026-06-01T00:00:00Z',
                          'payload': {'account_id': '1', 'region': 'r', 'scan_id': 's',
                                      'resources': res}}))
    return 0

if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == 'labels':
        sys.exit(labels(sys.argv[2]))
    if len(sys.argv) == 4 and sys.argv[1] == 'findings':
        sys.exit(findings(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 5 and sys.argv[1] == 'fuzz':
        sys.exit(fuzz(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    sys.exit(__doc__)
