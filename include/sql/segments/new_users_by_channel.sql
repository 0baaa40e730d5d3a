-- Users tagged with acquisition channel :channel who signed up within the last :days days, not
-- opted out: an onboarding audience per channel.
-- params: channel (text: app_store, search_ad, douyin_ad, wechat_share, offline_store, partner_referral), days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, acquisition_channel, signup_at
SELECT u.uid, u.nickname, u.city, u.timezone, u.acquisition_channel, u.signup_at
FROM users u
WHERE u.acquisition_channel = :channel
  AND u.signup_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
  AND NOT u.opted_out
ORDER BY u.uid
