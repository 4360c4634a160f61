// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title ComputeMesh provider stake
/// @notice Providers stake the settlement token as a bond for honest work. Withdrawal takes
///         two steps: `requestWithdrawal` moves stake to pending and starts the delay, and
///         `withdraw` pays it out once `withdrawDelay` has passed, so a provider cannot stake,
///         cheat and run before a dispute is raised. The operator slashes a provider for one
///         dispute at most once; the slashed amount goes to the wronged consumer or the
///         treasury, taken from the active stake first and then from the stake pending
///         withdrawal.
/// @dev Invariant: token.balanceOf(this) == sum over providers of (staked + pending).
///      The token must move exactly the amount asked (no fee-on-transfer or rebasing tokens).
///      One slot per provider: staked, pending (uint96 each) and the unlock time (uint64).
contract ProviderStake is AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    struct Stake {
        uint96 staked;
        uint96 pending;
        uint64 unlockAt;
    }

    IERC20 public immutable token;
    address public immutable treasury;
    /// @notice Seconds between a withdrawal request and the withdrawal.
    uint64 public immutable withdrawDelay;

    mapping(address provider => Stake) private _stakes;
    /// @notice The amount slashed for each dispute id (zero: never slashed).
    mapping(bytes32 disputeId => uint256) public slashedFor;

    event Staked(address indexed provider, uint256 amount, uint256 staked);
    event WithdrawalRequested(address indexed provider, uint256 amount, uint256 pending, uint64 unlockAt);
    event Withdrawn(address indexed provider, uint256 amount);
    event Slashed(
        address indexed provider,
        bytes32 indexed disputeId,
        uint256 amount,
        uint8 reasonCode,
        address recipient
    );

    error ZeroAddress();
    error ZeroAmount();
    error ZeroDispute();
    error InsufficientStake(address provider, uint256 requested, uint256 staked);
    error NothingPending(address provider);
    error WithdrawalLocked(address provider, uint64 unlockAt);
    error AlreadySlashed(bytes32 disputeId, uint256 amount);
    error NothingToSlash(address provider);

    constructor(address token_, address treasury_, address admin, address operator, uint64 withdrawDelay_) {
        if (token_ == address(0) || treasury_ == address(0) || admin == address(0) || operator == address(0)) {
            revert ZeroAddress();
        }
        token = IERC20(token_);
        treasury = treasury_;
        withdrawDelay = withdrawDelay_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        _grantRole(OPERATOR_ROLE, operator);
    }

    // --- providers ----------------------------------------------------------------------

    /// @notice Add `amount` to the caller's stake, pulled from the caller (who approved it).
    function stake(uint96 amount) external whenNotPaused nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Stake storage s = _stakes[msg.sender];
        uint96 total = s.staked + amount; // checked: a stake above 2^96-1 reverts
        s.staked = total;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(msg.sender, amount, total);
    }

    /// @notice Move `amount` of the caller's stake to pending withdrawal. The delay starts
    ///         again for everything pending: adding to a request cannot shorten the wait.
    ///         Pending stake can still be slashed.
    function requestWithdrawal(uint96 amount) external whenNotPaused {
        if (amount == 0) revert ZeroAmount();
        Stake storage s = _stakes[msg.sender];
        uint96 staked = s.staked;
        if (amount > staked) revert InsufficientStake(msg.sender, amount, staked);
        uint64 unlockAt = uint64(block.timestamp) + withdrawDelay;
        uint96 pending = s.pending + amount;
        unchecked {
            s.staked = staked - amount;
        }
        s.pending = pending;
        s.unlockAt = unlockAt;
        emit WithdrawalRequested(msg.sender, amount, pending, unlockAt);
    }

    /// @notice Pay the caller its pending stake once the delay has passed. Works while paused:
    ///         the platform cannot hold a provider's stake hostage.
    function withdraw() external nonReentrant {
        Stake storage s = _stakes[msg.sender];
        uint96 pending = s.pending;
        if (pending == 0) revert NothingPending(msg.sender);
        uint64 unlockAt = s.unlockAt;
        if (block.timestamp < unlockAt) revert WithdrawalLocked(msg.sender, unlockAt);
        s.pending = 0;
        s.unlockAt = 0;
        token.safeTransfer(msg.sender, pending);
        emit Withdrawn(msg.sender, pending);
    }

    // --- operator -----------------------------------------------------------------------

    /// @notice Slash `provider` for dispute `disputeId`: up to `amount` (capped at what it has
    ///         staked and pending) goes to `recipient` (the consumer, or the treasury).
    ///         A dispute is slashed once: a second slash for it reverts AlreadySlashed.
    ///         Stopped while paused (a leaked operator key cannot drain stakes).
    function slash(address provider, uint96 amount, uint8 reasonCode, bytes32 disputeId, address recipient)
        external
        onlyRole(OPERATOR_ROLE)
        whenNotPaused
        nonReentrant
        returns (uint256 slashed)
    {
        if (provider == address(0) || recipient == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (disputeId == bytes32(0)) revert ZeroDispute();
        uint256 done = slashedFor[disputeId];
        if (done != 0) revert AlreadySlashed(disputeId, done);
        Stake storage s = _stakes[provider];
        uint96 staked = s.staked;
        uint96 pending = s.pending;
        if (staked == 0 && pending == 0) revert NothingToSlash(provider);
        unchecked {
            uint96 fromStaked = amount < staked ? amount : staked;
            uint96 rest = amount - fromStaked;
            uint96 fromPending = rest < pending ? rest : pending;
            s.staked = staked - fromStaked;
            if (fromPending != 0) s.pending = pending - fromPending;
            slashed = uint256(fromStaked) + fromPending;
        }
        slashedFor[disputeId] = slashed;
        token.safeTransfer(recipient, slashed);
        emit Slashed(provider, disputeId, slashed, reasonCode, recipient);
    }

    // --- views ------------------------------------------------------------------------

    /// @notice A provider's active stake, its stake pending withdrawal, and when that unlocks.
    function stakes(address provider) external view returns (uint96 staked, uint96 pending, uint64 unlockAt) {
        Stake storage s = _stakes[provider];
        return (s.staked, s.pending, s.unlockAt);
    }

    // --- pauser -------------------------------------------------------------------------

    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }
}
