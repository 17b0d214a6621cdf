-- The UTC calendar window (start, end), in seconds, that holds `now`; weeks start on Monday.
-- Months use the proleptic Gregorian civil-date arithmetic of H. Hinnant's days_from_civil.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function calendar_window(period, now)
  local day = math.floor(now / 86400)
  if period == 'day' then
    return day * 86400, (day + 1) * 86400
  end
  if period == 'week' then
    local start = day - (day + 3) % 7
    return start * 86400, (start + 7) * 86400
  end
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  local next_year, next_month = year, month + 1
  if next_month > 12 then next_year, next_month = year + 1, 1 end
  return days_from_civil(year, month, 1) * 86400, days_from_civil(next_year, next_month, 1) * 86400
end
